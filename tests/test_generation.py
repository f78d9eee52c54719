"""One obvious way to get an image: `ranke_trl.generate` / `TextToImagePipeline` and `ranke-trl generate`, with the
run's saved sampling settings as defaults."""

import torch

from ranke_trl import TextToImagePipeline, generate
from ranke_trl.cli import main as cli_main
from ranke_trl.sampling import save_sampling


def test_generate_returns_pil_images_prompt_major(tiny_janus_dir):
    images = generate(tiny_janus_dir, ["a red square", "a blue circle"], images_per_prompt=2)
    assert len(images) == 4 and all(image.size == (64, 64) and image.mode == "RGB" for image in images)


def test_an_image_depends_on_its_seed_and_indices_not_on_the_batch(tiny_janus_dir):
    pipe = TextToImagePipeline.from_pretrained(tiny_janus_dir)
    together = pipe(["a red square", "a blue circle"], seed=3, batch_size=2, output_type="pt")
    alone = pipe(["a red square", "a blue circle"], seed=3, batch_size=1, output_type="pt")
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=0)  # same codes; decoding may differ in the last bits
    assert not torch.equal(together, pipe(["a red square", "a blue circle"], seed=4, output_type="pt"))


def test_the_runs_saved_sampling_settings_are_the_defaults(tiny_janus_dir, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(tiny_janus_dir, run)
    save_sampling({"guidance_scale": 2.0, "temperature": 0.7, "top_k": 5, "top_p": 0.8, "logprob_mode": "guided"},
                  run)
    pipe = TextToImagePipeline.from_pretrained(str(run))
    assert (pipe.sampling["guidance_scale"], pipe.sampling["top_k"]) == (2.0, 5)
    # top_k=1 is greedy: the explicit setting wins over the saved one
    a = pipe(["a red square"], seed=0, top_k=1, output_type="pt")
    b = pipe(["a red square"], seed=9, top_k=1, output_type="pt")
    assert torch.equal(a, b)


def test_the_generate_command_writes_pngs_and_an_index(tiny_janus_dir, tmp_path, capsys):
    out = tmp_path / "images"
    code = cli_main(["generate", "--model", str(tiny_janus_dir), "--prompt", "a red square", "--prompt",
                     "a green triangle", "--images_per_prompt", "2", "--output_dir", str(out), "--top_p", "0.5"])
    assert code == 0
    assert sorted(p.name for p in out.glob("*.png")) == ["0000_00.png", "0000_01.png", "0001_00.png", "0001_01.png"]
    assert (out / "prompts.txt").read_text().splitlines() == ["0000\ta red square", "0001\ta green triangle"]
    assert "overridden here: top_p=0.5" in capsys.readouterr().out


def test_the_generate_command_takes_the_sampler_and_draws_the_same_images(tiny_janus_dir, tmp_path):
    images = {}
    for sampler in ("eager", "static"):
        out = tmp_path / sampler
        assert cli_main(["generate", "--model", str(tiny_janus_dir), "--prompt", "a red square", "--output_dir",
                         str(out), "--sampler", sampler]) == 0
        images[sampler] = (out / "0000_00.png").read_bytes()
    assert images["eager"] == images["static"]


def test_commands_report_set_up_errors_as_one_named_line(tmp_path, capsys):
    import pytest

    with pytest.raises(SystemExit) as exit_info:
        cli_main(["generate", "--model", str(tmp_path / "missing"), "--prompt", "a red square"])
    assert exit_info.value.code == 2
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["eval", "--policy_name_or_path", "x", "--max_promts", "3"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "error: Unknown recipe key 'max_promts'" in err and "Traceback" not in err
