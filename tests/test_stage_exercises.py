"""The stage notebooks 01-08 and explore.ipynb each end with an "Exercises" cell, and the worked
solution of each (``notebooks/solutions/stage_*.py``) runs and passes the checks it states; the
solutions about trained students (notebooks 02-04) run on smoke runs trained here. The checks test the
lessons' outcomes: under a plausible wrong implementation (``MUTATIONS``) the solution fails."""

import importlib
import json
import runpy
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from g2sd_lib import losses
from g2sd_lib.models.student import G2SDStudent

REPO = Path(__file__).resolve().parents[1]
SOLUTIONS = REPO / "notebooks" / "solutions"
NOTEBOOKS = sorted((REPO / "notebooks").glob("0[1-8]_*.ipynb")) + [REPO / "notebooks" / "explore.ipynb"]
ON_TRAINED_RUNS = {"02_generic_distillation", "03_specific_distillation", "04_evaluation"}  # stage_runs.py users


def _solution(notebook: Path) -> Path:
    """notebooks/01_teacher.ipynb -> notebooks/solutions/stage_01_teacher.py"""
    return SOLUTIONS / f"stage_{notebook.stem}.py"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_ends_with_numbered_exercises_and_has_a_solution(path):
    last = json.loads(path.read_text())["cells"][-1]
    text = "".join(last["source"])
    assert last["cell_type"] == "markdown" and text.startswith("## Exercises"), f"{path.name}: no final Exercises cell"
    numbered = [line for line in text.splitlines() if line[:2] in {f"{i}." for i in range(1, 5)}]
    assert 2 <= len(numbered) <= 4, f"{path.name}: {len(numbered)} exercises"
    assert "Expected" in text and _solution(path).name in text
    assert _solution(path).is_file()


@pytest.fixture(scope="module")
def smoke_runs(tmp_path_factory, fmnist_available):
    """``runs/smoke`` as the pipeline leaves it, for the runs the solutions read: the teachers (trained,
    the smoke profile's mode), the GD student and the g2sd and scratch students (seed 0); about a minute."""
    from g2sd_lib.pipeline import config, profiles
    from g2sd_lib.pipeline.stages import run_stage
    from g2sd_lib.pipeline.teacher import obtain_teacher
    root = tmp_path_factory.mktemp("runs") / "smoke"
    params = profiles.load_profile("smoke")
    params["data"]["root"] = str(fmnist_available)
    obtain_teacher(params, root)
    run_stage(config.stage_config(params, "pretrain", "gd", root))
    for name in ("g2sd", "scratch"):
        run_stage(config.stage_config(params, "students", name, root, seed=params["seeds"][0]))
    return root


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_solution_runs_and_its_checks_pass(path, fmnist_available, monkeypatch, capsys, request):
    # in this process (no second torch import), as `python notebooks/solutions/stage_<notebook>.py`
    if path.stem in ON_TRAINED_RUNS:
        monkeypatch.setenv("G2SD_RUNS", str(request.getfixturevalue("smoke_runs")))
    script = _solution(path)
    monkeypatch.setattr(sys, "argv", [str(script)])
    monkeypatch.syspath_prepend(str(SOLUTIONS))
    runpy.run_path(str(script), run_name="__main__")
    assert "solutions: OK" in capsys.readouterr().out


# ------------------------------------------------------------------ the solutions fail for wrong code
# Each solution's checks test the lesson's outcome, so a plausible wrong implementation (of the library
# or of the solution's own helper) must make them fail, with the message of the check that caught it.
GD_LOSS, STUDENT_FEATURES, CWD_LOSS = losses.gd_loss, G2SDStudent.forward_features, losses.cwd_loss


def _gd_loss_torch_default_beta(pred, teacher_hidden, mask=None, beta=2.0, eps=1e-6):
    return GD_LOSS(pred, teacher_hidden, mask, beta=1.0, eps=eps)  # whatever beta the caller asks for


def _student_draws_its_own_mask(self, imgs, mask_ratio, noise):
    return STUDENT_FEATURES(self, imgs, mask_ratio, torch.rand_like(noise))  # not the caller's noise


def _sd_loss_soft_target(cls_logits, dist_logits, targets, teacher_logits):
    label = losses.soft_target_cross_entropy(cls_logits, targets) if targets.dim() > 1 else \
        F.cross_entropy(cls_logits, targets)
    distill = losses.soft_target_cross_entropy(dist_logits, F.softmax(teacher_logits, -1))  # not the argmax
    return (label + distill) / 2, {"label": label.detach(), "distill": distill.detach()}


def _soft_kd_student_not_tempered(logits, teacher_logits, temperature=4.0):
    log_p_t = F.log_softmax(teacher_logits / temperature, dim=-1)
    return F.kl_div(F.log_softmax(logits, dim=-1), log_p_t, log_target=True, reduction="batchmean") * temperature**2


def _same_mistake_is_both_wrong(s, z, y):
    teacher_wrong = z.argmax(1) != y
    return (((s.argmax(1) == y) & ~teacher_wrong).float().mean().item(),
            ((s.argmax(1) != y) & teacher_wrong).float().mean().item())  # any wrong class counted


def _eval_forward_cls_head_only(self, x):
    cls, dist = self.forward_heads(self.forward_features(x))
    return (cls, dist) if self.training else cls


def _cwd_weight_not_passed(student_logits, teacher_logits, tau=1.0, weight=3.0):
    return CWD_LOSS(student_logits, teacher_logits, tau=tau)  # the default weight 3, whatever the task's


def _cwd_softmax_over_channels(student_logits, teacher_logits, tau=1.0, weight=3.0):
    N, C, H, W = student_logits.shape
    p_t = F.softmax(teacher_logits / tau, dim=1)  # per position over the classes: pixel-wise KD, not CWD
    return weight * tau**2 * torch.sum(-p_t * F.log_softmax(student_logits / tau, dim=1)) / (N * C)


def _cwd_teacher_only_tempered(student_logits, teacher_logits, tau=1.0, weight=3.0):
    N, C, H, W = student_logits.shape
    p_t = F.softmax(teacher_logits.reshape(N * C, H * W) / tau, dim=1)
    log_p_s = F.log_softmax(student_logits.reshape(N * C, H * W), dim=1)
    return weight * tau**2 * torch.sum(-p_t * log_p_s) / (N * C)


MUTATIONS = {  # id: (notebook stem, what is replaced, the wrong variant, the failing check's message)
    "02.1-target-not-layernormed": ("02_generic_distillation", "g2sd_lib.losses.feature_target",
                                    lambda h, eps=1e-6: h, "unit variance"),
    "02.1-smooth-l1-beta-1": ("02_generic_distillation", "g2sd_lib.losses.gd_loss", _gd_loss_torch_default_beta,
                              "unit variance"),
    "02.2-masks-not-shared": ("02_generic_distillation", "g2sd_lib.models.student.G2SDStudent.forward_features",
                              _student_draws_its_own_mask, "shared mask"),
    "03.1-soft-target-not-argmax": ("03_specific_distillation", "g2sd_lib.losses.sd_classification_loss",
                                    _sd_loss_soft_target, "hard distillation must"),
    "03.1-kd-student-not-tempered": ("03_specific_distillation", "g2sd_lib.losses.soft_kd_loss",
                                     _soft_kd_student_not_tempered, "soft KD must copy"),
    "04.1-same-mistake-any-class": ("04_evaluation", "stage_04_evaluation.split_agreement",
                                    _same_mistake_is_both_wrong, "both right \\+ same mistake"),
    "04.3-heads-not-averaged": ("04_evaluation", "g2sd_lib.models.classifier.DistilledViT.forward",
                                _eval_forward_cls_head_only, "combine both heads"),
    "07.1-cwd-weight-not-passed": ("07_dense_training", "g2sd_lib.dense.segmentation.cwd_loss",
                                   _cwd_weight_not_passed, "weight 0 must"),
    "07.2-cwd-softmax-over-channels": ("07_dense_training", "g2sd_lib.losses.cwd_loss", _cwd_softmax_over_channels,
                                       "spatial entropy"),
    "07.2-cwd-teacher-only-tempered": ("07_dense_training", "g2sd_lib.losses.cwd_loss", _cwd_teacher_only_tempered,
                                       "minimum"),
}


@pytest.mark.slow
@pytest.mark.parametrize("mutation", MUTATIONS)
def test_solution_fails_under_a_wrong_implementation(mutation, fmnist_available, monkeypatch, request):
    stem, target, wrong, message = MUTATIONS[mutation]
    if stem in ON_TRAINED_RUNS:
        monkeypatch.setenv("G2SD_RUNS", str(request.getfixturevalue("smoke_runs")))
    # 07 uses runs/<profile>'s trained dense teacher where a checkout has one: the bundled encoder here, as on a
    # fresh clone (a trained teacher lets another of its checks catch the same mutation first)
    monkeypatch.setattr(sys, "argv", [f"stage_{stem}.py", *(["--profile", "no-such-runs"] if stem == "07_dense_training" else [])])
    monkeypatch.syspath_prepend(str(SOLUTIONS))
    solution = importlib.import_module(f"stage_{stem}")
    monkeypatch.setattr(target, wrong)
    with pytest.raises(AssertionError, match=message):
        solution.main()
