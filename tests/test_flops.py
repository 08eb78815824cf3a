"""MFU's two halves: the chip's dense peak by device kind, the measured rate beside it."""

import pytest

from nlm_jax import flops


@pytest.mark.parametrize("kind, dtype, chip, tflops", [
    ("NVIDIA H100 80GB HBM3", "bfloat16", "H100 SXM", 989.5),  # the SXM board's name
    ("NVIDIA H100 PCIe", "bfloat16", "H100 PCIe", 756.5),
    ("NVIDIA H100 NVL", "bfloat16", "H100 NVL", 835.5),
    ("NVIDIA H200", "bfloat16", "H200 SXM", 989.5),
    ("NVIDIA H200 NVL", "float16", "H200 NVL", 835.5),
    ("NVIDIA A100-SXM4-80GB", "bfloat16", "A100", 312),
    ("NVIDIA A100-PCIE-40GB", "bfloat16", "A100", 312),
    ("NVIDIA L4", "bfloat16", "L4", 121),
    ("TPU v4", "bfloat16", "TPU v4", 275),
    ("TPU v5 lite", "bfloat16", "TPU v5e", 197),
    ("TPU v5", "bfloat16", "TPU v5p", 459),
    ("TPU v5p", "bfloat16", "TPU v5p", 459),
    ("TPU v6 lite", "bfloat16", "TPU v6e", 918),
    ("NVIDIA H100 80GB HBM3", "float32", "H100 SXM", 494.5),  # TF32, JAX's default there
    ("NVIDIA A100-SXM4-40GB", "float32", "A100", 156),
])
def test_known_chips_have_their_vendor_dense_peak(kind, dtype, chip, tflops):
  assert flops.chip_peak(kind, dtype) == (chip, pytest.approx(tflops * 1e12))


@pytest.mark.parametrize("kind, dtype", [
    ("cpu", "float32"), ("NVIDIA L40S", "bfloat16"), ("NVIDIA GeForce RTX 4090", "bfloat16"),
    ("NVIDIA GH200 480GB", "bfloat16"),
    ("TPU v5 lite", "float32"),  # float32 dots run as bf16 passes there: no single peak
    ("NVIDIA H100 80GB HBM3", "int8")])
def test_unknown_kinds_and_dtypes_have_none(kind, dtype):
  assert flops.chip_peak(kind, dtype) is None


def test_mfu_is_against_the_chip_with_the_measured_rate_beside_it():
  peak = flops.Peak.of("NVIDIA H200", "bfloat16", measured=700e12)
  fields = peak.fields(achieved=247.375e12)
  assert fields["mfu"] == pytest.approx(0.25) and fields["peak_flops_per_s"] == 989.5e12
  assert fields["mfu_of_measured_peak"] == pytest.approx(247.375 / 700)
  assert fields["measured_peak_flops_per_s"] == 700e12
  assert fields["peak_source"] == "H200 SXM bfloat16 dense peak 989.5 TFLOP/s (vendor)"


def test_an_unknown_kind_falls_back_to_the_measured_rate_and_says_so():
  fields = flops.Peak.of("cpu", "float32", measured=1.4e11).fields(achieved=0.7e11)
  assert fields["mfu"] == fields["mfu_of_measured_peak"] == pytest.approx(0.5)
  assert fields["peak_source"] == "measured float32 matmul rate (no float32 peak known for device kind 'cpu')"
