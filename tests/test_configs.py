"""configs/base.py: presets and named arguments, and that the seed study's variants are them."""
import pytest

from configs import base
from data import datasets
from sheap_jax import loss_study


def test_named_arguments_edit_only_their_fields():
  plain = base.get_config("cpu").to_dict()
  edited = base.get_config("cpu,renderer=mesh,losses=landmarks_only").to_dict()
  assert edited["renderer"] == "mesh" and plain["renderer"] == "gaussians"
  kept = {name for name, entry in edited["losses"].items() if entry["weight"] != 0}
  assert kept == set(base.PRIORS) | {"landmarks"}
  for name, entry in edited["losses"].items():  # options untouched, kept weights as given
    assert {k: v for k, v in entry.items() if k != "weight"} == {
        k: v for k, v in plain["losses"][name].items() if k != "weight"}
    if name in kept:
      assert entry["weight"] == plain["losses"][name]["weight"]
  for key in set(plain) - {"renderer", "losses"}:
    assert edited[key] == plain[key], key
  assert base.get_config("losses=full").to_dict() == base.get_config().to_dict()
  no_landmarks = base.get_config("losses=no_landmarks").losses
  assert no_landmarks.landmarks.weight == 0 and no_landmarks.l1.weight == 0.8


@pytest.mark.parametrize("arg", ["gpu", "cpu,size=3", "renderer", "cpu,losses="])
def test_unknown_argument_is_one_line_naming_the_accepted_ones(arg):
  with pytest.raises(ValueError) as error:
    base.get_config(arg)
  message = str(error.value)
  assert "\n" not in message and message.startswith("configs/base.py: unknown argument")
  assert "cpu, renderer=<gaussians|mesh>, losses=<full|landmarks_only|no_landmarks>" in message


def test_unknown_loss_preset_is_named():
  with pytest.raises(ValueError, match="losses='most'; accepted: full, landmarks_only"):
    base.get_config("losses=most")


@pytest.mark.parametrize("variant", sorted(loss_study.VARIANTS))
def test_study_variants_are_config_arguments(variant):
  arguments = ",".join(f"{k}={v}" for k, v in loss_study.VARIANTS[variant][1].items())
  expected = base.get_config(f"cpu,{arguments}" if arguments else "cpu")
  expected.seed = 4
  expected.eval_every, expected.preview_every = expected.total_steps, 0
  assert loss_study.variant_config(base.get_config("cpu"), variant, 4).to_dict() == \
      expected.to_dict()


def test_dataset_registry_refuses_unknown_names_and_unbuilt_data(tmp_path):
  config = base.get_config("cpu")
  config.data.name = "imagenet"
  with pytest.raises(datasets.ConfigError, match=r"^config.data.name='imagenet'; registered "
                     r"datasets: \['synthetic_heads', 'video_folder'\]$"):
    datasets.open_dataset(config)
  config.data.update(name="synthetic_heads", data_dir=str(tmp_path), build_if_missing=False)
  with pytest.raises(datasets.ConfigError, match="synthetic_heads/demo is not built under"):
    datasets.open_dataset(config)
