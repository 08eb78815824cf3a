"""The error every module may raise for bad input: the lowest room of the house, so that
data, model and checkpoint code need not import the configuration to report a problem."""


class UserError(Exception):
  """Bad input from the user: reported as one line, without a traceback."""
