"""The adapter interface is the whole interface: a backbone that is not Janus (tests/toy_backbone.py), registered
the way a third party would, trains through the unchanged trainer in every mode, saves and reloads."""

import pytest
import torch

from ranke_trl import RankEConfig, RankEGRPOTrainer
from ranke_trl.policy import BACKBONES, make_policy
from ranke_trl.rewards import CLIPReward
from tiny_data import colour_squares
from toy_backbone import ToyCodec, ToyImageGPT, ToyImageGPTConfig, ToyPolicy


class MeanRedReward:
    """A differentiable reward on [0, 1] images: the mean of the red channel."""

    is_differentiable = True
    __name__ = "mean_red"

    def score(self, images01, prompts):
        return images01[:, 0].mean(dim=(1, 2))

    def __call__(self, prompts, completions, **kwargs):
        return self.score(torch.stack(completions), prompts).tolist()


def _toy(tokenizer):
    torch.manual_seed(0)
    return ToyImageGPT(ToyImageGPTConfig(vocab_size=len(tokenizer)))


def _trainer(tmp_path, model, tokenizer, **overrides):
    args = RankEConfig(
        output_dir=str(tmp_path), bf16=False, per_device_train_batch_size=8, num_generations=4, max_steps=2,
        learning_rate=1e-2, decoder_learning_rate=1e-2, discriminator_learning_rate=1e-3, report_to=[],
        save_strategy="no", decoder_batch_size=4, lambda_lpips=0.0, log_images_steps=0, discriminator_layers=1,
        discriminator_channels=8, logging_steps=1, **overrides,
    )
    return RankEGRPOTrainer(model=model, reward_funcs=[MeanRedReward()], args=args,
                            train_dataset=colour_squares(), processing_class=tokenizer)


def _snapshot(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _changed(before, module):
    return [k for k, v in module.state_dict().items() if not torch.equal(before[k], v)]


def test_a_registered_backbone_is_found_by_its_model(tiny_tokenizer):
    assert BACKBONES["toy_image_gpt"] is ToyPolicy
    assert isinstance(make_policy(_toy(tiny_tokenizer), tiny_tokenizer), ToyPolicy)


@pytest.mark.parametrize("mode", ["std_rl", "ranke"])
def test_a_non_janus_backbone_trains_through_the_unchanged_trainer(tmp_path, tiny_tokenizer, mode):
    model = _toy(tiny_tokenizer)
    head, vq = _snapshot(model.head), _snapshot(model.vq)
    trainer = _trainer(tmp_path, model, tiny_tokenizer, train_decoder=mode == "ranke")
    trainer.train()
    assert _changed(head, model.head), "the policy must train"
    decoder_changed = _changed(vq, trainer.codec.module)
    if mode == "ranke":
        assert decoder_changed and all(k.startswith("decoder.") for k in decoder_changed)
    else:
        assert not decoder_changed, "Std. RL leaves the VQ bit-identical"


def test_a_non_janus_backbone_saves_the_whole_system_and_its_decoder(tmp_path, tiny_tokenizer):
    model = _toy(tiny_tokenizer)
    trainer = _trainer(tmp_path, model, tiny_tokenizer)
    trainer.train()
    trainer.save_model()
    reloaded = ToyImageGPT.from_pretrained(tmp_path)
    decoder = ToyPolicy.load_codec(str(tmp_path / "decoder"))
    for key, value in trainer.codec.module.state_dict().items():
        assert torch.equal(reloaded.vq.state_dict()[key], value)
        assert torch.equal(decoder.module.state_dict()[key], value)
    assert isinstance(decoder, ToyCodec)
