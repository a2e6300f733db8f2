"""The report's one overall verdict (first in report.json, report.md and report.html), the numbers in words
(3 significant digits, ∞, never "nan"), a privacy sentence per cell, the terms defined, TPR at low FPR,
the claimed trade-off curve, and the network and training reports: mechanism fields read from where they
live, the audit of the same privacy configuration matched by digest."""

from __future__ import annotations

import copy
import hashlib
import json
import math
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from mrff_secure.audit_log import AuditLog
from mrff_secure.errors import ConfigError
from mrff_secure.report import audit_match, build_report, privacy_config_digest, write_report
from mrff_secure.report.build import tpr_at_fpr
from mrff_secure.report.plots import claimed_tradeoff, style
from mrff_secure.report.tables import fmt
from mrff_secure.report.verdict import derive_verdict
from mrff_secure.secagg.primitives import generate_identity_key

FIXTURE = Path(__file__).parents[1] / "fixtures" / "audit_small" / "grid.json"
FAILING_CELL = "secagg+dp z=1 seed=0"


def _grid() -> dict:
    return json.loads(FIXTURE.read_text())


def _folder(tmp_path: Path, grid: dict, name: str = "audit") -> Path:
    folder = tmp_path / name
    folder.mkdir()
    (folder / "grid.json").write_text(json.dumps(grid))
    return folder


def _failing_r2(grid: dict) -> dict:
    """The fixture with R2 failing in one cell: the canaries separate more than the claimed noise allows."""
    grid = copy.deepcopy(grid)
    body = grid["rules"]["R2"]["cells"][FAILING_CELL]
    body.update(verdict="fails", mu_hat=4.71, mu_hat_family=[2.9, 6.5], measured_noise_multiplier=0.3)
    grid["rules"]["R2"]["verdict"] = "fails"
    return grid


def test_numbers_in_words():
    assert fmt(1.0) == "1.00" and fmt(3.9998) == "4.00" and fmt(0.0013732) == "0.00137"
    assert fmt(1e-5) == "1e-05" and fmt(1234.5) == "1.23e+03" and fmt(20.891) == "20.9"
    assert fmt(float("inf")) == "∞" and fmt("inf") == "∞" and fmt(float("-inf")) == "-∞"
    assert fmt(float("nan")) == "not computed" and fmt("nan") == "not computed"
    assert fmt(None) == "n/a" and fmt(40) == "40" and fmt(True) == "yes"


def test_the_grids_verdict_comes_first_everywhere(tmp_path):
    grid = _grid()
    grid["verdict"] = {
        "verdict": "fails",
        "exit_code": 3,
        "headline": "R2 fails in secagg+dp z=1 seed=0: less noise than claimed",
        "alpha": 0.01,
        "tests": 18,
        "problems": [
            {
                "rule": "R2",
                "cell": FAILING_CELL,
                "what": "mu_hat 4.71 (2.90 to 6.50) above the claimed mu 1.41",
                "next": "check the noise multiplier given to the accountant",
            }
        ],
        "not_tested": ["the choice of C"],
    }
    paths = write_report(_folder(tmp_path, grid))
    report = json.loads(paths["json"].read_text())
    assert list(report)[:5] == ["schema", "kind", "source", "created_utc", "verdict"]
    assert report["verdict"]["verdict"] == "fails" and report["verdict"]["source"] == "grid.json"
    assert report["verdict"]["problems"] == grid["verdict"]["problems"]
    markdown = paths["md"].read_text()
    head = markdown.split("# mrff-secure privacy report")[0]  # everything before the details
    assert markdown.startswith("# Verdict: FAILS\n")
    for text in ("R2 fails in secagg+dp z=1 seed=0", FAILING_CELL, "mu_hat 4.71", "check the noise multiplier"):
        assert text in head, text
    assert "alpha = 0.0100 over 18 statistical tests" in head and "the choice of C" in head
    page = paths["html"].read_text()
    banner = page.index("id='verdict'")
    assert banner < page.index("<h1>") and banner < page.index("id='verdicts'")
    assert "banner-fails" in page[banner : page.index("</section>")]
    assert FAILING_CELL in page[banner : page.index("</section>")]


def test_an_old_grid_gets_a_verdict_derived_from_its_rules(tmp_path):
    grid = _grid()
    assert "verdict" not in grid
    report = build_report(_folder(tmp_path, grid))
    verdict = report["verdict"]
    # the fixture: every rule holds, R1 is not refutable at m = 40, R0 lacks only the interaction MIA's power
    assert verdict["verdict"] == "holds" and verdict["exit_code"] == 0 and verdict["problems"] == []
    assert verdict["tests"] == 3 * 6 and verdict["alpha"] == pytest.approx(3 * 0.05)
    assert any(line.startswith("membership_auc: 0.873 at plain noise 0") for line in verdict["not_tested"])
    assert any("not refutable at m" in line and "m = 40" in line for line in verdict["not_tested"])


def test_a_failing_rule_names_its_cell_its_numbers_and_what_to_do(tmp_path):
    paths = write_report(_folder(tmp_path, _failing_r2(_grid())))
    report = json.loads(paths["json"].read_text())
    verdict = report["verdict"]
    assert verdict["verdict"] == "fails" and verdict["exit_code"] == 3
    [problem] = verdict["problems"]
    assert problem["rule"] == "R2" and problem["cell"] == FAILING_CELL
    for number in ("4.71", "2.90 to 6.50", "mu = 1.41", "z = 0.300", "z = 1.00"):
        assert number in problem["what"], number
    assert "noise multiplier" in problem["next"] and "new seed" in problem["next"]
    assert FAILING_CELL in verdict["headline"]
    markdown = paths["md"].read_text()
    assert markdown.startswith("# Verdict: FAILS\n")
    assert f"**R2, {FAILING_CELL}**: {problem['what']}" in markdown.split("# mrff-secure")[0]


@pytest.mark.parametrize(
    "lacking,expected",
    [
        (["membership_auc"], "holds"),
        (["canary_auc"], "inconclusive"),
        (["canary_auc", "membership_auc"], "inconclusive"),
    ],
)
def test_r0_without_the_canarys_power_is_inconclusive_never_holds(lacking, expected):
    rules = copy.deepcopy(_grid()["rules"])
    rules["R0"]["attacks_without_power"] = lacking
    rules["R0"]["verdict"] = "inconclusive"
    verdict = derive_verdict(rules)
    assert verdict["verdict"] == expected
    if expected == "inconclusive":
        assert verdict["exit_code"] == 3 and "canary_auc" in verdict["headline"]
        assert "holds" not in verdict["headline"]


def test_no_dp_cell_means_no_claim_tested():
    rules = {"R0": {"verdict": "holds", "attacks_without_power": [], "thresholds": {"canary_auc": 1.0}}}
    rules["R5"] = {"verdict": "not applicable", "series": {}}
    assert derive_verdict(rules)["verdict"] == "no claim tested"


def test_a_malformed_verdict_is_refused(tmp_path):
    grid = _grid()
    grid["verdict"] = {"verdict": "probably fine"}
    with pytest.raises(ConfigError, match="probably fine"):
        build_report(_folder(tmp_path, grid))
    grid["verdict"] = {"verdict": "fails", "problems": [{"rule": "R2"}]}
    with pytest.raises(ConfigError, match="rule, cell, what, next"):
        build_report(_folder(tmp_path, grid, "other"))


def test_a_privacy_sentence_per_cell_and_the_terms_defined(tmp_path):
    grid = _grid()
    grid["cells"][2]["claim"]["epsilon_replace_one"] = 31.25  # secagg+dp z=1: zero-out, with its replace-one
    grid["cells"][3]["scores"]["membership_auc"] = "nan"  # an attack whose score is undefined in one cell
    paths = write_report(_folder(tmp_path, grid))
    report = json.loads(paths["json"].read_text())
    sentences = {c["cell"]: c["text"] for c in report["privacy_statement"]["cells"]}
    assert len(sentences) == len(grid["cells"])
    assert sentences[FAILING_CELL].startswith(
        f"{FAILING_CELL}: each user's data, over 2 rounds, is (9.68, 0.00631)-DP under zero-out adjacency "
        "(under replace-one adjacency, one user's data swapped for another's: epsilon 31.2)"
    )
    assert "(3.99, 0.00631)-DP under replace-one adjacency" in sentences["local-dp eps=4 seed=0"]
    assert "unbounded (∞)" in sentences["plain z=0 seed=0"]
    assert "accountant: RDP of the distributed" in sentences[FAILING_CELL]
    markdown, page = paths["md"].read_text(), paths["html"].read_text()
    for sentence in sentences.values():
        assert sentence in markdown
    for term in ("m (canaries per cell)", "family confidence", "zero-out adjacency", "replace-one adjacency"):
        assert f"**{term}**" in markdown and f"<th>{term}</th>" in page
    for term in ("not refutable at m", "max certifiable", "alpha (false-alarm rate)"):
        assert f"**{term}**" in markdown
    assert "m = 40 in this audit" in report["terms"]["m (canaries per cell)"]
    bounds = {row["cell"]: row for row in report["bounds"]}
    assert bounds[FAILING_CELL]["epsilon_replace_one"] == 31.25
    assert "| 31.2 |" in markdown
    # a NaN score is "not computed", never "nan"; report.json carries no NaN
    assert "membership_auc" in report["attacks"][3]["not_computed"]
    assert re.search(r"\bnan\b", markdown, re.IGNORECASE) is None
    assert re.search(r"\bnan\b", page.split("<h2>Plots</h2>")[0], re.IGNORECASE) is None
    assert "not computed" in markdown


def test_tpr_at_low_fpr_per_cell(tmp_path):
    report = build_report(_folder(tmp_path, _grid()))
    rows = [r for r in report["low_fpr"] if r["attack"] == "canary"]
    assert {r["cell"] for r in rows} == {c["cell"] for c in _grid()["cells"] if c.get("canary")}
    for row in rows:
        cell = next(c for c in _grid()["cells"] if c["cell"] == row["cell"])
        assert row["auc"] == pytest.approx(cell["canary"]["canary_auc"])
        # the grid's own 1% point (attacks.scores.tpr_at_fpr) and ours agree
        assert row["tpr_at_1%_fpr"] == pytest.approx(cell["canary"]["canary_tpr_at_1pct_fpr"])
        assert row["tpr_at_0.1%_fpr"] <= row["tpr_at_1%_fpr"]
        low, high = row["tpr_at_1%_fpr_95"]  # Clopper-Pearson over the included canaries
        assert low <= row["tpr_at_1%_fpr"] <= high and high - low < 1.0
        assert row["positives"] == sum(bool(i) for i in cell["canary"]["included"])
    # by hand: 4 members, 10 non-members (7, 2, 2, 1.5, 1, 0.4, ...); at FPR x, floor(10 x) non-members may
    # score above the threshold
    scores = [9, 8, 1, 0.35, 7, 2, 2, 1.5, 1, 0.4, 0.3, 0.2, 0.1, 0.0]
    included = [True, True, True, True] + [False] * 10
    assert tpr_at_fpr(scores, included, 0.0) == 0.5  # above the best non-member (7): 9 and 8
    assert tpr_at_fpr(scores, included, 0.1) == 0.5  # above the second (2): still 9 and 8
    assert tpr_at_fpr(scores, included, 0.2) == 0.5  # ties count once: above 2 again
    assert tpr_at_fpr(scores, included, 0.3) == 0.5  # above 1.5
    assert tpr_at_fpr(scores, included, 0.4) == 0.5  # above 1 (the member at 1 is not above it)
    assert tpr_at_fpr(scores, included, 0.5) == 0.75  # above 0.4: 9, 8 and 1
    assert tpr_at_fpr(scores, included, 0.6) == 1.0  # above 0.3: all four
    assert tpr_at_fpr(scores, [True] * 14, 0.01) is None


def test_the_claimed_tradeoff_curve_and_distinct_line_styles():
    fpr = np.array([0.0, 0.001, 0.01, 0.1, 0.5, 0.9, 1.0])
    curve = claimed_tradeoff(fpr, epsilon=1.0, delta=1e-5)
    expected = np.minimum(1, np.minimum(math.e * fpr + 1e-5, 1 - math.exp(-1) * np.clip(1 - 1e-5 - fpr, 0, None)))
    assert np.allclose(curve, expected)
    assert curve[2] == pytest.approx(math.e * 0.01 + 1e-5)  # the first condition binds at low FPR
    assert curve[5] == pytest.approx(1 - math.exp(-1) * (1 - 1e-5 - 0.9))  # the symmetric one near FPR 1
    assert np.all(np.diff(curve) >= 0) and curve.max() <= 1
    assert np.all(claimed_tradeoff(fpr, epsilon=math.inf, delta=0.0) == 1)
    looks = [(tuple(style(i)["color"]), style(i)["linestyle"]) for i in range(40)]
    assert len(set(looks)) == 40


def test_the_privacy_config_digest():
    fields = {
        "mechanism": "discrete_gaussian",
        "clip": 1,
        "noise_multiplier": 1.0,
        "num_neighbours": None,
        "threshold": None,
        "rounds": 2,
    }
    canonical = (
        '{"clip":1.0,"mechanism":"discrete_gaussian","noise_multiplier":1.0,"num_neighbours":null,'
        '"rounds":2,"threshold":null}'
    )
    assert privacy_config_digest(fields) == hashlib.sha256(canonical.encode()).hexdigest()
    assert privacy_config_digest(dict(reversed(list(fields.items())))) == privacy_config_digest(fields)
    for key, other in (("mechanism", "skellam"), ("clip", 0.5), ("noise_multiplier", 1.1), ("rounds", 3)):
        assert privacy_config_digest({**fields, key: other}) != privacy_config_digest(fields), key
    assert privacy_config_digest({**fields, "num_neighbours": 6, "threshold": 4}) != privacy_config_digest(fields)
    with pytest.raises(ConfigError, match="missing"):
        privacy_config_digest({k: v for k, v in fields.items() if k != "rounds"})
    with pytest.raises(ConfigError, match="unknown"):
        privacy_config_digest({**fields, "colour": "blue"})
    with pytest.raises(ConfigError, match="rounds"):
        privacy_config_digest({**fields, "rounds": 2.5})


def _network_run(folder: Path, *, rounds: int = 2, noise: float = 1.0, epsilon: float = 9.5) -> Path:
    folder.mkdir()
    log = AuditLog(folder / "audit.jsonl", generate_identity_key())
    spec = {
        "clip": 1.0,
        "count_cap": 30,
        "dp_mode": "distributed",
        "local_steps": 1,
        "lr": 0.1,
        "mechanism": "discrete_gaussian",
        "min_group_size": 5,
        "min_survivors": 14,
        "modulus_bits": 32,
        "noise_multiplier": noise,
        "optimizer": "adam",
    }
    settings = {"secure": True, "rounds": rounds, "dp_delta": 1e-5, "num_neighbours": None, "threshold": None}
    settings.update(max_dropout_fraction=0.3, corrupt_neighbours=2, min_clients=20, client_fraction=1.0)
    log.append({"type": "run_started", "run_id": "r1", "settings": settings, "spec": spec}, sync=True)
    ledger = {"epsilon": epsilon, "delta": 1e-5, "adjacency": "zero-out", "epsilon_replace_one": 22.0}
    ledger["bound"] = "RDP of the distributed integer mechanism"
    for r in range(rounds):
        record = {"type": "round", "round": r, "participants": list(range(20)), "epsilon": ledger}
        log.append({**record, "wire_bytes": {"received": 2_736_620, "sent": 1_822_300}}, sync=True)
    return folder


def test_a_network_report_reads_its_mechanism_and_cites_the_matching_audit(tmp_path):
    audit = _folder(tmp_path, _failing_r2(_grid()))
    run = _network_run(tmp_path / "net")  # the configuration of the audit's secagg+dp z=1 cell
    match = audit_match(run, audit)
    assert match["audited"] and match["cells"] == [FAILING_CELL]
    assert match["cell_verdicts"]["R2"] == {FAILING_CELL: "fails"}
    assert "R2 in secagg+dp z=1 seed=0" in match["text"]
    paths = write_report(run, audit_dir=audit)
    report = json.loads(paths["json"].read_text())
    assert report["kind"] == "network" and report["verdict"]["verdict"] == "fails"
    assert FAILING_CELL in report["verdict"]["headline"]
    mechanism = report["mechanism"]
    assert mechanism["threat model"] == "secagg+dp" and mechanism["mechanism"] == "discrete_gaussian"
    assert mechanism["clip C"] == 1.0 and mechanism["noise multiplier z"] == 1.0
    assert mechanism["modulus (bits)"] == 32 and mechanism["minimum group size"] == 5
    assert mechanism["noise shares sized for (survivors)"] == 14 and mechanism["rounds (planned)"] == 2
    markdown = paths["md"].read_text()
    assert "- **clip C**: 1.00" in markdown and "- **noise multiplier z**: 1.00" in markdown
    assert "{" not in markdown.split("## Reproducibility")[0]  # no raw dicts
    assert "(9.50, 1e-05)-DP under zero-out adjacency" in report["privacy_statement"]["text"]
    assert "replace-one adjacency, one user's data swapped for another's: epsilon 22.0" in markdown
    # another number of rounds: not this configuration, and the report says so
    other = _network_run(tmp_path / "net3", rounds=3)
    report = build_report(other, audit_dir=audit)
    assert report["verdict"]["verdict"] == "no claim tested"
    assert report["audit_match"]["text"].startswith("not audited:")
    assert "rounds 2 there, 3 here" in report["audit_match"]["text"]
    assert build_report(other)["audit_match"]["verdict"] == "not audited"


def test_a_training_report_shows_its_mechanism_plots_and_what_is_outside(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run = tmp_path / "train"
    (run / "operator-only").mkdir(parents=True)
    fig, ax = plt.subplots(figsize=(2, 2))
    ax.plot([0, 1], [0, 1])
    fig.savefig(run / "operator-only" / "training.png")
    plt.close(fig)
    privacy = {
        "mode": "distributed",
        "secure_aggregation": "fast",
        "mechanism": "discrete_gaussian",
        "clip": 1.0,
        "noise_multiplier": 0.5,
        "accounted_noise_multiplier": 0.2887,
        "rounds_accounted": 3,
        "modulus_bits": 32,
        "min_group_size": 5,
        "epsilon": 41.2044,
        "epsilon_replace_one": 149.2,
        "delta": 0.0013732,
        "adjacency": "zero-out",
        "epsilon_bound": "RDP of the distributed discrete_gaussian",
        "sampling": "no amplification by sampling",
        "release": {"n_min": 280, "count_cap": 30},
        "noise_source": "operating-system entropy",
        "private": True,
        "warnings": ["epsilon 41.2 > 10: a weak guarantee"],
    }
    outputs = {"outside_the_guarantee": {"operator-only/evaluation.json": "computed on private data without noise"}}
    summary = {"privacy": privacy, "config": {"federation": {"seed": 0}}, "outputs": outputs}
    (run / "summary.json").write_text(json.dumps(summary))
    paths = write_report(run)
    report = json.loads(paths["json"].read_text())
    assert report["plots"] == ["operator-only/training.png"]
    assert report["threat_models"][0]["name"] == "secagg+dp"
    mechanism = report["mechanism"]
    assert mechanism["noise shares sized for (survivors)"] == 280 and mechanism["modulus (bits)"] == 32
    assert report["verdict"]["verdict"] == "no claim tested"
    assert report["verdict"]["warnings"] == ["epsilon 41.2 > 10: a weak guarantee"]
    markdown, page = paths["md"].read_text(), paths["html"].read_text()
    assert markdown.startswith("# Verdict: NO CLAIM TESTED\n")
    assert "(41.2, 0.00137)-DP under zero-out adjacency" in markdown
    assert "operator-only/evaluation.json: computed on private data without noise" in markdown
    assert page.count("data:image/png;base64,") == 1 and "banner-no-claim-tested" in page


def test_the_default_audits_report_builds_fast(tmp_path):
    """Eight cells and the four plots; the default audit's 14 cells take about twice the plotting."""
    import time

    folder = _folder(tmp_path, _grid())
    start = time.perf_counter()
    write_report(folder)
    assert time.perf_counter() - start < 6.0


def test_the_html_never_prints_a_python_dict(tmp_path):
    folder = tmp_path / "copy"
    folder.mkdir()
    shutil.copy(FIXTURE, folder / "grid.json")
    page = write_report(folder)["html"].read_text()
    body = page.split("<h2>Reproducibility</h2>")[0].split("</style>")[1]
    assert re.search(r"\{'|\{\"", body) is None


def test_a_run_without_dp_makes_no_claim(tmp_path):
    run = tmp_path / "plain"
    run.mkdir()
    summary = {"privacy": {"mode": "off", "secure_aggregation": "off", "epsilon": "inf", "private": False}}
    (run / "summary.json").write_text(json.dumps(summary))
    report = build_report(run)
    assert report["threat_models"][0]["name"] == "plain"
    assert report["verdict"]["verdict"] == "no claim tested"
    assert "unbounded (∞)" in report["verdict"]["headline"] and report["mechanism"]["mechanism"] == "none (no noise)"
