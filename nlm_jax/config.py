"""The pre-training configuration: absl flags in, one frozen, validated Config out.

Flags end here: library code receives a `Config` and never reads `FLAGS`.
This module imports no JAX, so a bad flag is reported in a fraction of a second.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os

from absl import flags

from nlm_jax.errors import UserError  # also config.UserError, as before

ENCODINGS = ("conv", "bpe", "kmer", "nuc")
TOKEN_ENCODINGS = ("bpe", "kmer", "nuc")
PRECISIONS = ("auto", "fp32", "bf16")
ATTENTIONS = ("auto", "xla", "cudnn", "reference")
REMATS = ("none", "block", "dots")
TASKS = ("mlm", "cls")
# The settings that take one of a few words, for Config.validate and model folders alike.
CHOICES = {"encoding_method": ENCODINGS, "precision": PRECISIONS, "attention": ATTENTIONS,
           "remat": REMATS, "task": TASKS}
# Fields a resumed run may change (more epochs, other save cadence, what the backward pass
# recomputes) without starting anew.
RESUMABLE = ("epochs", "checkpoint_every_steps", "fresh", "remat", "progress")
MAX_TOKEN_PARAMS = 1_000_000_000  # embedding + output layer: beyond this --k is refused
MAX_STEPS = 2**31 - 1  # the optimizer's step counter is an int32
MAX_CPU_DEVICES = 256  # more only slow a CPU down (and 100,000 hung JAX's start)


@dataclasses.dataclass(frozen=True)
class Range:
  """The finite values from `low` to `high`, each end included unless open."""
  low: float
  high: float = math.inf
  low_open: bool = False
  high_open: bool = False

  def __contains__(self, value: float) -> bool:
    above = self.low < value if self.low_open else self.low <= value
    below = value < self.high if self.high_open else value <= self.high
    return math.isfinite(value) and above and below

  def __str__(self) -> str:
    low, high = (int(x) if math.isfinite(x) and x == int(x) else x for x in (self.low, self.high))
    if self.high == math.inf:
      return f"above {low}" if self.low_open else f"at least {low}"
    return f"in {'(' if self.low_open else '['}{low}, {high}{')' if self.high_open else ']'}"


# The range of every numeric setting, checked before anything starts: for the flags by
# Config.validate, for the config.json of a model folder by folders.py. Upper ends where a
# larger value breaks something: seeds are 32-bit, warm-up is counted in int32 steps, and
# an epoch's order of samples is held in memory (8 bytes a sample).
RANGES = {
    "epochs": Range(1), "n_samples_per_epoch": Range(1, 10**8), "batch_size": Range(1),
    "warmup_steps": Range(0, MAX_STEPS), "d_model": Range(1), "N": Range(1), "d_ff": Range(1),
    "h": Range(1), "dropout": Range(0, 1), "n_kernels": Range(1), "kernel_size": Range(1),
    "k": Range(1), "p_mlm": Range(0, 1), "p_mask": Range(0, 1), "p_random": Range(0, 1),
    "context_length": Range(2), "mask_size": Range(1), "seed": Range(0, 2**32 - 1),
    "checkpoint_every_steps": Range(0), "n_eval": Range(1),
    "learning_rate": Range(0, low_open=True), "weight_decay": Range(0),
    "bpe_vocab_size": Range(9), "encoder_dropout": Range(0, 1, high_open=True),
    "valid_seed": Range(0, 2**32 - 1),
}


# The --fasta_index flag of every command that reads FASTA files (filecache.py).
FASTA_INDEX_HELP = (
    "Folder of the FASTA indexes: the first open of a FASTA file reads it once and keeps its "
    "index there; later opens (a resume, every host, embed and classify) read only the index. "
    "Default: $NLM_JAX_FASTA_INDEX, else nlm_jax/fasta in the user's cache folder "
    "($XDG_CACHE_HOME or ~/.cache); 'none': a temporary folder, for this run only.")


# The --help of pretrain and finetune: lncRNA-Py's flags grouped as its scripts order them
# (data, architecture, training); the rest are nlm_jax's own (cli.OWN). A flag that the
# command lacks is left out.
HELP_GROUPS = {
    "data": ("data_dir", "results_dir", "model_dir", "exp_prefix"),
    "architecture": ("encoding_method", "d_model", "N", "d_ff", "h", "dropout", "hidden_cls_layers",
                     "n_kernels", "kernel_size", "bpe_file", "k", "context_length", "input_linear",
                     "no_input_relu", "no_output_linear", "output_relu"),
    "training": ("pretrained_model", "epochs", "n_samples_per_epoch", "batch_size", "warmup_steps",
                 "learning_rate", "weight_decay", "p_mlm", "p_mask", "p_random", "mask_size",
                 "no_random_reading_frame", "no_weighted_loss", "freeze_network", "freeze_kernels"),
}


def define_flags(fv: flags.FlagValues = flags.FLAGS, task: str = "mlm") -> None:
  """Defines on `fv` every flag of the pre-training contract (pretrain-cli.md), or with
  task "cls" those of lncRNA-Py's fine-tuning script (its `train`), same names and
  defaults."""
  d = dict(flag_values=fv)
  mlm = task == "mlm"
  flags.DEFINE_string("exp_prefix", "MLM" if mlm else "CLS", "Added prefix to model/experiment name.", **d)
  flags.DEFINE_enum("encoding_method", "conv", ENCODINGS, "Sequence encoding method.", **d)
  flags.DEFINE_integer("epochs", 500 if mlm else 100,
                       f"Number of epochs to {'pre-train' if mlm else 'train'} for.", **d)
  flags.DEFINE_integer("n_samples_per_epoch", 10000, "Number of training samples per epoch.", **d)
  flags.DEFINE_integer("batch_size", 8, "Number of samples per optimization step (global, over all devices).", **d)
  if mlm:
    flags.DEFINE_integer(
        "warmup_steps", 8,
        "Number of optimization steps in which learning rate increases linearly. After this "
        "amount of steps, the learning rate decreases proportional to the inverse square root "
        "of the step number.", **d)
  else:
    flags.DEFINE_string(
        "pretrained_model", "",
        "Fine-tunes this pre-trained model instead of training one from scratch: a folder of "
        "nlm_jax.pretrain or nlm_jax.export, a pre-trained model of lncRNA-Py's "
        "save_pretrained, or a Hugging Face hub id such as "
        "luukromeijn/lncRNA-BERT-CSE-k9-pretrained. Its encoding, architecture and tokenizer "
        "come with it (a flag that sets them otherwise is an error); --context_length "
        "decides the context.", **d)
    flags.DEFINE_float("learning_rate", 1e-5, "Learning rate of the Adam optimizer (constant).", **d)
    flags.DEFINE_float("weight_decay", 0.0, "Weight decay of the Adam optimizer (L2, as torch.optim.Adam).", **d)
  flags.DEFINE_integer("d_model", 768, "BERT embedding dimensionality.", **d)
  flags.DEFINE_integer("N", 12, "Number of BERT transformer blocks.", **d)
  flags.DEFINE_integer("d_ff", None, "Number of nodes in BERT FFN sublayers (default 4*d_model).", **d)
  flags.DEFINE_integer("h", None, "Number of BERT self-attention heads (default d_model/64, at least 1).", **d)
  flags.DEFINE_float("dropout", 0.0, f"Dropout probability in {'MLM' if mlm else 'CLS'} output head.", **d)
  if not mlm:
    flags.DEFINE_list(
        "hidden_cls_layers", [],
        "Comma-separated numbers of nodes of ReLU-activated layers between the pooled "
        "embedding and the output, e.g. 256,128 (default: none).", **d)
  flags.DEFINE_integer("n_kernels", 768, "Number of kernels when convolutional sequence encoding is used.", **d)
  flags.DEFINE_integer("kernel_size", 10 if mlm else 9,
                       "Kernel size when convolutional sequence encoding is used.", **d)
  flags.DEFINE_string("bpe_file", "", "Filepath to BPE model generated with the BPE script. Required when Byte Pair Encoding is used.", **d)
  flags.DEFINE_integer("k", 6, "Specifies k when k-mer encoding is used.", **d)
  if mlm:
    flags.DEFINE_float("p_mlm", 0.15, "Selection probability per token/nucleotide in MLM.", **d)
    flags.DEFINE_float("p_mask", 0.8, "Mask probability for a selected token/nucleotide.", **d)
    flags.DEFINE_float("p_random", 0.1, "Random replacement probability for a selected token/nucleotide.", **d)
  flags.DEFINE_integer(
      "context_length", 768,
      "Number of input positions, CLS included. For conv encoding this means "
      "(context_length-1)*kernel_size input nucleotides, for k-mers (context_length-1)*k.", **d)
  flags.DEFINE_string("data_dir", "", "Parent directory of the FASTA and BPE paths (empty: paths as given).", **d)
  flags.DEFINE_string("results_dir", "", "Parent directory of the results folder (empty: the working directory).", **d)
  flags.DEFINE_string(
      "model_dir", None,
      f"Directory where to save the {'pre-trained' if mlm else 'trained'} model; the checkpoint "
      f"with the highest {'validation accuracy' if mlm else 'F1 (macro)|valid'} is kept "
      "(default <data_dir>/models).", **d)
  if mlm:
    flags.DEFINE_integer("mask_size", 1, "Number of contiguous nucleotides that make up a mask.", **d)
    flags.DEFINE_boolean(
        "packing", False,
        "Packs several sequences into each training row, each with its own CLS, positions and "
        "masks, attention never crossing from one to another: most positions then hold real "
        "nucleotides instead of padding (at context 768 on GENCODE's lncRNAs, 0.94 instead "
        "of 0.20). An epoch still draws n_samples_per_epoch sequences, in fewer steps; the "
        "learning-rate schedule counts steps. Off by default, as lncRNA-Py (a sequence a row).",
        **d)
  else:
    flags.DEFINE_boolean("no_weighted_loss", False,
                         "Turns off the weighting of the pcRNA loss by n_ncRNA / n_pcRNA of the "
                         "training set (the correction for class imbalance).", **d)
  flags.DEFINE_boolean(
      "no_random_reading_frame", False,
      "Turns off sampling in a random reading frame for conv and k-mer encodings (nuc and "
      "BPE have no frame).", **d)
  if not mlm:
    flags.DEFINE_boolean(
        "freeze_network", False,
        "Freezes every weight of the pre-trained model (only the head trains) and classifies "
        "the mean embedding instead of CLS. Needs --pretrained_model.", **d)
    flags.DEFINE_boolean("freeze_kernels", False,
                         "Freezes the convolutional sequence encoding weights of the pre-trained "
                         "model. Needs --pretrained_model and conv encoding.", **d)
  flags.DEFINE_boolean(
      "input_linear", None,
      "Forces a linear projection of kernels onto d_model dimensions in conv encoding "
      "(default: only when n_kernels != d_model).", **d)
  flags.DEFINE_boolean("no_input_relu", False, "Turns off the ReLU activation of kernels in conv encoding.", **d)
  flags.DEFINE_boolean(
      "attend_partial_window", False,
      "conv: attention also sees a sequence's last window when it holds fewer than "
      "kernel_size nucleotides (nlm_jax's rule before 2026-12; its models keep the rule they "
      "were trained with). Off: lncRNA-Py's rule, CLS and whole windows only, so its models "
      "give its outputs and exported models behave alike in lncRNA-Py.", **d)
  if mlm:
    flags.DEFINE_boolean(
        "no_output_linear", False,
        "Removes the linear projection of embeddings onto n_kernels dimensions before the "
        "masked-convolution output layer.", **d)
    flags.DEFINE_boolean("output_relu", False, "Adds a ReLU activation of embeddings before the masked-convolution output layer.", **d)
  flags.DEFINE_integer("seed", 0, "Seed of every random draw (data order, windows, masks, initialisation, dropout).", **d)
  flags.DEFINE_enum(
      "attention", "auto", ATTENTIONS,
      "Attention implementation: auto (cuDNN's fused kernel on GPUs, where it applies: "
      "bf16, head width a multiple of 8; XLA elsewhere), xla (materialises the "
      "batch x heads x context^2 logits), cudnn (as auto, and says why when it falls back "
      "to XLA), or reference (the plain formula, for checking).", **d)
  flags.DEFINE_enum(
      "remat", "none", REMATS,
      "Rematerialisation (trading compute for memory): none keeps every activation for the "
      "backward pass; block keeps only each encoder block's input and recomputes the rest "
      "(least memory, about a third more compute); dots also keeps the outputs of the dense "
      "layers and recomputes attention and the elementwise work.", **d)
  flags.DEFINE_enum(
      "precision", "auto", PRECISIONS,
      "Compute dtype: bf16 (parameters, optimizer state, softmax and loss stay float32) or "
      "fp32; auto is bf16 on GPU/TPU and fp32 on CPU.", **d)
  flags.DEFINE_integer(
      "checkpoint_every_steps", 500,
      "Also save the resume checkpoint every this many steps inside an epoch (0: only after "
      "each epoch and on SIGTERM or Ctrl-C).", **d)
  flags.DEFINE_boolean(
      "fresh", False,
      "Start anew although model_dir/exp_name holds a checkpoint: the old model and results "
      "folders are kept, renamed with a .replaced-<time> suffix.", **d)
  flags.DEFINE_boolean(
      "progress", True,
      "Show each epoch's progress (steps, steps/s, time left) in a line rewritten on the "
      "terminal; never when stderr is not a terminal (--noprogress: never).", **d)
  if mlm:  # fine-tuning has --pretrained_model, and evaluates on the whole validation set
    flags.DEFINE_string(
        "init_from", "",
        "Start from the parameters of this model folder (of nlm_jax.pretrain or nlm_jax.export, "
        "or a pre-trained model of lncRNA-Py's save_pretrained, or its Hugging Face hub id), "
        "with a fresh optimizer and "
        "learning-rate schedule. The architecture is the folder's: a flag that sets it otherwise "
        "is an error. Not under --data_dir.", **d)
    flags.DEFINE_integer(
        "n_eval", 2500,
        "Sequences in each evaluation subset, as lncRNA-Py: the validation subset holds "
        "min(n_eval, validation records) (seed 42), the training subset as many training "
        "records (at most all of them).", **d)
  # Runtime flags (not part of the Config): the compilation cache, multi-host set-up.
  flags.DEFINE_string(
      "compilation_cache", None,
      "Folder of JAX's persistent compilation cache: a second run or a resume of the same "
      "configuration skips compiling. Default: $NLM_JAX_COMPILATION_CACHE, else nlm_jax/xla "
      "in the user's cache folder ($XDG_CACHE_HOME or ~/.cache); 'none' turns it off.", **d)
  flags.DEFINE_string("fasta_index", None, FASTA_INDEX_HELP, **d)
  flags.DEFINE_integer(
      "cpu_devices", 0,
      "On a CPU, split each batch over this many JAX devices (data parallel inside one "
      "machine: XLA keeps the cores busier with one device per core). 0: one per core, at "
      "most the batch size, a divisor of it; 1 for models whose steps are too small to gain "
      f"(batch x context x d_model^2 x N below 2^25); at most {MAX_CPU_DEVICES}. Ignored when "
      "XLA_FLAGS sets xla_force_host_platform_device_count, with --distributed, and on GPUs "
      "and TPUs.",
      lower_bound=0, upper_bound=MAX_CPU_DEVICES, **d)
  flags.DEFINE_boolean(
      "distributed", False,
      "Call jax.distributed.initialize() first, for multi-host TPU VMs and GPU clusters "
      "(arguments detected on TPU, Slurm and Open MPI; else give the three flags below).", **d)
  flags.DEFINE_string("coordinator_address", None, "With --distributed: host:port of process 0.", **d)
  flags.DEFINE_integer("num_processes", None, "With --distributed: the number of processes.",
                       lower_bound=1, **d)
  flags.DEFINE_integer("process_id", None, "With --distributed: this process's index.",
                       lower_bound=0, **d)


@dataclasses.dataclass(frozen=True)
class Config:
  """Everything a run needs; built once by `from_flags` (or directly in tests)."""

  fasta_train: str
  fasta_valid: str
  exp_prefix: str = "MLM"
  encoding_method: str = "conv"
  epochs: int = 500
  n_samples_per_epoch: int = 10000
  batch_size: int = 8
  warmup_steps: int = 8
  d_model: int = 768
  N: int = 12
  d_ff: int | None = None
  h: int | None = None
  dropout: float = 0.0
  n_kernels: int = 768
  kernel_size: int = 10
  bpe_file: str = ""
  k: int = 6
  p_mlm: float = 0.15
  p_mask: float = 0.8
  p_random: float = 0.1
  context_length: int = 768
  data_dir: str = ""
  results_dir: str = ""
  model_dir: str | None = None
  mask_size: int = 1
  packing: bool = False
  no_random_reading_frame: bool = False
  input_linear: bool | None = None
  no_input_relu: bool = False
  attend_partial_window: bool = False
  no_output_linear: bool = False
  output_relu: bool = False
  seed: int = 0
  precision: str = "auto"
  attention: str = "auto"
  remat: str = "none"
  checkpoint_every_steps: int = 500
  fresh: bool = False
  progress: bool = True
  init_from: str = ""
  n_eval: int = 2500
  # Fine-tuning (task "cls", nlm_jax.finetune): a pcRNA/ncRNA classifier. fasta_train and
  # fasta_valid then hold the pcRNAs (the positive class), these two the ncRNAs.
  task: str = "mlm"
  fasta_nc_train: str = ""
  fasta_nc_valid: str = ""
  pretrained_model: str = ""
  learning_rate: float = 1e-5
  weight_decay: float = 0.0
  hidden_cls_layers: tuple[int, ...] = ()
  no_weighted_loss: bool = False
  freeze_network: bool = False
  freeze_kernels: bool = False
  # Not flags of the contract: fixed by lncRNA-Py, kept visible here.
  bpe_vocab_size: int | None = None  # read from --bpe_file by from_flags
  encoder_dropout: float = 0.1  # inside the encoder (the original's BERT default)
  valid_seed: int = 42  # picks the validation subset, as in the original

  def __post_init__(self):  # JSON gives a list: one type, so configurations compare equal
    object.__setattr__(self, "hidden_cls_layers", tuple(self.hidden_cls_layers))

  # Derived values. Properties, so they can never disagree with the fields.
  @property
  def ff_dim(self) -> int:
    return self.d_ff if self.d_ff is not None else 4 * self.d_model

  @property
  def n_heads(self) -> int:
    return self.h if self.h is not None else max(1, self.d_model // 64)

  @property
  def use_input_linear(self) -> bool:
    if self.input_linear is None:
      return self.d_model != self.n_kernels
    return self.input_linear

  @property
  def n_nucleotides(self) -> int:
    """Nucleotides in one conv input window: (context_length - 1) * kernel_size."""
    return (self.context_length - 1) * self.kernel_size

  @property
  def is_token(self) -> bool:
    return self.encoding_method in TOKEN_ENCODINGS

  @property
  def token_k(self) -> int:
    """k of the k-mer tokenizer: 1 for nuc."""
    return 1 if self.encoding_method == "nuc" else self.k

  @property
  def vocab_size(self) -> int:
    """Output classes: 4 nucleotides for conv, the token vocabulary otherwise."""
    if self.encoding_method == "conv":
      return 4
    if self.encoding_method == "bpe":
      return self.bpe_vocab_size
    return 5 + 4 ** self.token_k

  @property
  def bpe_path(self) -> str:
    return _under(self.data_dir, self.bpe_file)

  @property
  def train_path(self) -> str:
    return _under(self.data_dir, self.fasta_train)

  @property
  def valid_path(self) -> str:
    return _under(self.data_dir, self.fasta_valid)

  @property
  def nc_train_path(self) -> str:
    return _under(self.data_dir, self.fasta_nc_train)

  @property
  def nc_valid_path(self) -> str:
    return _under(self.data_dir, self.fasta_nc_valid)

  @property
  def is_classifier(self) -> bool:
    return self.task == "cls"

  @property
  def pooling(self) -> str:
    """What the classifier classifies: the CLS output, or the mean over the real positions
    when the network is frozen (lncRNA-Py's probing)."""
    return "mean" if self.freeze_network else "cls"

  @property
  def model_root(self) -> str:
    if self.model_dir is not None:
      return self.model_dir
    return os.path.join(self.data_dir, "models") if self.data_dir else "models"

  @property
  def exp_name(self) -> str:
    """The experiment name of lncRNA-Py (original-behaviour.md 2.3; for fine-tuning, its
    train script's)."""
    name = f"{self.exp_prefix}_{self.encoding_method}"
    if self.is_classifier and self.pretrained_model:
      name += "_finetuned"
    if self.encoding_method == "kmer":
      name += f"_k{self.k}"
    elif self.encoding_method == "bpe":
      name += f"_vs{self.bpe_vocab_size}"
    elif self.encoding_method == "conv":
      name += f"_nm{self.n_kernels}_sm{self.kernel_size}"
    name += f"_dm{self.d_model}_N{self.N}"
    # lncRNA-Py's train script takes d_ff and h from the pre-trained model, resolved.
    finetuned = self.is_classifier and bool(self.pretrained_model)
    d_ff, h = (self.ff_dim, self.n_heads) if finetuned else (self.d_ff, self.h)
    if d_ff is not None:
      name += f"_dff{d_ff}"
    if h is not None:
      name += f"_h{h}"
    if self.is_classifier:
      return name + self._cls_name_tail()
    # `:g` prints 0 and 0.0 alike ("d0"), unlike the original.
    name += f"_bs{self.batch_size}_ws{self.warmup_steps}_cl{self.context_length}_d{self.dropout:g}"
    if self.mask_size != 1:
      name += f"_ms{self.mask_size}"
    # Only where the flag changes the run (the original adds them for every encoding):
    # the reading frame for conv and k-mers, the rest for conv.
    if self.no_random_reading_frame and self.has_reading_frame:
      name += "--no_rrf"
    if self.packing:
      name += "--packed"
    if self.encoding_method == "conv":
      for on, suffix in ((self.input_linear is True, "--in_lin"),
                         (self.no_input_relu, "--no_in_relu"),
                         (self.no_output_linear, "--no_out_lin"),
                         (self.output_relu, "--out_relu")):
        if on:
          name += suffix
    return name

  def _cls_name_tail(self) -> str:
    name = f"_bs{self.batch_size}_lr{self.learning_rate:g}_wd{self.weight_decay:g}"
    name += f"_cl{self.context_length}_d{self.dropout:g}"
    if self.hidden_cls_layers:  # not in the original's name: runs would share a folder
      name += "_hl" + "-".join(map(str, self.hidden_cls_layers))
    conv = self.encoding_method == "conv"
    for on, suffix in ((self.no_weighted_loss, "--no_weighted_loss"),
                       (self.has_reading_frame and self.no_random_reading_frame, "--no_rrf"),
                       (self.freeze_network, "--freeze_network"),
                       (self.freeze_kernels, "--freeze_kernels"),
                       (conv and self.input_linear is True, "--in_lin"),
                       (conv and self.no_input_relu, "--no_in_relu")):
      if on:
        name += suffix
    return name

  @property
  def has_reading_frame(self) -> bool:
    """Whether windows can start in another frame: conv and k-mers (k > 1) have one, nuc
    and BPE (one-nucleotide steps) none."""
    return self.encoding_method == "conv" or (self.encoding_method == "kmer" and self.k > 1)

  @property
  def results_path(self) -> str:
    return os.path.join(self.results_dir, self.exp_name) if self.results_dir else self.exp_name

  @property
  def checkpoint_path(self) -> str:
    return os.path.join(self.model_root, self.exp_name)

  def validate(self) -> "Config":
    """Raises UserError naming the first problem and its fix; returns self."""
    for name, allowed in RANGES.items():
      value = getattr(self, name)
      if value is not None and value not in allowed:
        raise UserError(f"--{name} must be {allowed}, got {value}.")
    for name, words in CHOICES.items():
      if getattr(self, name) not in words:
        raise UserError(f"--{name} must be one of {', '.join(words)}, got {getattr(self, name)!r}.")
    if self.attend_partial_window and self.encoding_method != "conv":
      raise UserError(f"--attend_partial_window concerns the windows of conv encoding; this "
                      f"model is {self.encoding_method}: drop --attend_partial_window.")
    steps = self.epochs * -(-self.n_samples_per_epoch // self.batch_size)
    if steps > MAX_STEPS:
      raise UserError(f"--epochs {self.epochs} of {steps // self.epochs:,} steps make {steps:,} "
                      f"steps, more than the {MAX_STEPS:,} the optimizer counts: lower --epochs "
                      "or --n_samples_per_epoch.")
    if self.d_model % self.n_heads:
      raise UserError(f"--d_model {self.d_model} is not divisible by the {self.n_heads} attention heads: "
                      "choose --h that divides --d_model.")
    if self.dropout >= 1.0:
      raise UserError("--dropout must be below 1 (1 would drop every activation).")
    if self.p_mlm == 0.0:
      raise UserError("--p_mlm must be above 0: with nothing selected there is nothing to learn.")
    if self.p_mask + self.p_random > 1.0 + 1e-9:
      raise UserError(f"--p_mask + --p_random must be at most 1, got {self.p_mask} + {self.p_random}.")
    if self.encoding_method == "conv":
      if self.input_linear is False and self.d_model != self.n_kernels:
        raise UserError(f"--noinput_linear needs --n_kernels equal to --d_model ({self.n_kernels} != "
                        f"{self.d_model}): drop --noinput_linear or set --n_kernels {self.d_model}.")
      if self.task == "mlm" and self.mask_size > self.n_nucleotides:
        raise UserError(f"--mask_size {self.mask_size} exceeds the {self.n_nucleotides} nucleotides of "
                        "a window: lower it.")
      if self.task == "mlm" and int(self.p_mlm / self.mask_size * self.n_nucleotides) < 1:
        raise UserError(f"--p_mlm {self.p_mlm} selects no span in a window of {self.n_nucleotides} "
                        "nucleotides: raise --p_mlm or --context_length, or lower --mask_size.")
    elif self.encoding_method == "kmer" and self.k > 1:
      head_params = 2 * self.vocab_size * self.d_model
      if head_params > MAX_TOKEN_PARAMS:
        raise UserError(f"--k {self.k} makes a vocabulary of 5 + 4^{self.k} = {self.vocab_size:,} tokens: "
                        f"its embedding and output layers alone would hold {head_params:,} parameters "
                        f"at --d_model {self.d_model}. Choose a smaller --k (lncRNA-Py used 3, 6, 9).")
    elif self.encoding_method == "bpe" and not self.bpe_file:
      raise UserError("--encoding_method bpe needs --bpe_file: pass a sentencepiece model, e.g. one "
                      "fitted with python -m nlm_jax.bpe FASTA VOCAB_SIZE.")
    if not self.exp_prefix or os.sep in self.exp_prefix:
      raise UserError(f"--exp_prefix must be a non-empty name without '{os.sep}', got {self.exp_prefix!r}.")
    if self.task == "cls":
      self._validate_cls()
    return self

  def _validate_cls(self) -> None:
    if self.packing:
      raise UserError("--packing packs sequences for pre-training; fine-tuning classifies one "
                      "sequence a row: drop --packing.")
    if any(n < 1 for n in self.hidden_cls_layers):
      raise UserError(f"--hidden_cls_layers must be positive numbers of nodes, got "
                      f"{','.join(map(str, self.hidden_cls_layers))}.")
    for name in ("freeze_network", "freeze_kernels"):
      if getattr(self, name) and not self.pretrained_model:
        raise UserError(f"--{name} freezes pre-trained weights: add --pretrained_model, or drop "
                        f"--{name} to train from scratch.")
    if self.freeze_kernels and self.encoding_method != "conv":
      raise UserError(f"--freeze_kernels freezes the kernels of conv encoding; this model is "
                      f"{self.encoding_method}: drop --freeze_kernels.")

  def differences(self, other: "Config") -> list[str]:
    """Flags whose values differ, except those a resumed run may change."""
    a, b = dataclasses.asdict(self), dataclasses.asdict(other)
    return [k for k in a if k not in RESUMABLE and a[k] != b.get(k)]

  def to_json(self) -> str:
    return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True)

  @classmethod
  def from_json(cls, text: str) -> "Config":
    fields = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in with_rules_of_its_time(json.loads(text)).items() if k in fields})


def with_rules_of_its_time(stored: dict) -> dict:
  """A stored configuration with the rules it was written under: conv models from before
  attend_partial_window was a field attended to a sequence's partial last window."""
  if stored.get("encoding_method") == "conv" and "attend_partial_window" not in stored:
    return {**stored, "attend_partial_window": True}
  return stored


def check_writable(folder: str, what: str, flag: str) -> None:
  """Fails unless `folder` exists as a writable folder or could be created; creates nothing,
  so a run refused for one folder leaves no trace in the other."""
  parent = os.path.abspath(folder)
  while not os.path.exists(parent):
    parent = os.path.dirname(parent)
  if not os.path.isdir(parent):
    raise UserError(f"cannot create the {what} folder {folder!r}: {parent!r} is a file. Choose "
                    f"another {flag}.")
  if not os.access(parent, os.W_OK | os.X_OK):
    raise UserError(f"the {what} folder {folder!r} is not writable ({parent!r}): choose a "
                    f"writable {flag}.")


def _under(data_dir: str, path: str) -> str:
  return os.path.join(data_dir, path) if data_dir else path
