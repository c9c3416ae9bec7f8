"""Recall probes: teacher-forced scores equal a direct forward, forks equal whole contexts, the reuse
of states costs what the cost model says, exact-match scoring, and the files written."""
from __future__ import annotations

import csv

import pyarrow.parquet as pq
import pytest
import torch

from docstream.cli import build_parser
from docstream.model import load_model
from docstream.tasks import recall
from docstream.tasks.generate import Generation
from docstream.tasks.recall import (
    ProbeConfig,
    answer_matches,
    build_trials,
    context_tokens,
    layout,
    parse_depths,
    parse_lengths,
    probe,
    write_results,
)
from docstream.tokenizer import load_tokenizer
from tests.blas_variation import vary_rounding_by_row_count
from tests.tasks.test_generate import byte_tokenizer_file, tiny_model_file

GRID = dict(lengths=[320, 480], depths=[0, 40, 100], trials=2, chunk_len=64, batch_size=4)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def lm(tmp_path_factory):
    root = tmp_path_factory.mktemp("recall")
    model_path = tiny_model_file(root / "tiny7.pth")
    return load_model(model_path), load_tokenizer(byte_tokenizer_file(root / "bytes.json")), model_path


@pytest.fixture(scope="module")
def haystack(tmp_path_factory):
    root = tmp_path_factory.mktemp("hay")
    (root / "a.txt").write_text("Rivers run to the sea. Stones stay where they fall.\nSome lights are quiet.")
    (root / "b.txt").write_text("Paper burns at a known temperature. Winter comes after autumn!")
    return root


class CountingModel:
    """The model, counting every token it is fed (batch rows times sequence length)."""

    def __init__(self, model):
        self.model, self.fed = model, 0

    def forward(self, tokens, state=None, all_logits=False):
        self.fed += torch.as_tensor(tokens).numel()
        return self.model.forward(tokens, state, all_logits)

    def step(self, tokens, state=None, inplace=False):
        self.fed += torch.as_tensor(tokens).numel()
        return self.model.step(tokens, state, inplace)

    def __getattr__(self, name):
        return getattr(self.model, name)


@pytest.fixture(scope="module")
def passkey_run(lm):
    model, tok, _ = lm
    counter = CountingModel(model)
    config = ProbeConfig(**GRID)
    return config, probe(counter, tok, config, model_name="tiny7", progress=False), counter.fed


def _whole_context_scores(model, tok, config, row):
    """Teacher-forced scores of one trial row, from one forward over its whole context and answer."""
    trial = build_trials(config, tok)[row["trial"]]
    cell = layout(trial, row["length"], row["depth"], config.snap_to_sentence)
    context = context_tokens(trial, cell)
    logits = model.forward(context + trial.answer[:-1], all_logits=True)[0][0]
    log_probs = torch.log_softmax(logits, dim=-1)
    at = len(context) - 1
    values = [float(log_probs[at + i, a]) for i, a in enumerate(trial.answer)]
    # the rank's range: logits within float32 rounding of the answer's may fall on either side of it
    answer = float(logits[at, trial.answer[0]])
    margin = FORWARD_ATOL + FORWARD_RTOL * abs(answer)
    low = 1 + int((logits[at] > answer + margin).sum())
    high = int((logits[at] > answer - margin).sum())  # counts the answer itself: the "1 +"
    return len(context), len(trial.header) + cell.position, sum(values), values[0], (low, high)


#: the forks run batched, from states carried across chunks: other row counts than one forward of the
#: whole context, so the scores agree to float32 rounding (bitwise on some CPUs, not on AVX-512 or ARM)
FORWARD_ATOL = FORWARD_RTOL = 1e-5


def test_forked_scores_equal_a_direct_forward_of_the_whole_context(lm, passkey_run):
    model, tok, _ = lm
    config, result, _ = passkey_run
    assert len(result.trials) == 2 * 3 * 2 and len(result.cells) == 2 * 3
    for row in result.trials:
        n, needle_at, *scores = _whole_context_scores(model, tok, config, row)
        assert n == row["length"] and needle_at == row["needle_position"]
        _assert_scores_match(row, *scores)


def test_forked_scores_match_under_a_blas_that_rounds_by_row_count(lm, monkeypatch):
    """As on AVX-512 or ARM CPUs, where a row's last bits change with the rows sharing its product."""
    vary_rounding_by_row_count(monkeypatch)
    model, tok, _ = lm
    config = ProbeConfig(**dict(GRID, lengths=[320], depths=[0, 100], trials=1))
    result = probe(model, tok, config, model_name="tiny7", progress=False)
    differs = False
    for row in result.trials:
        scores = _whole_context_scores(model, tok, config, row)[2:]
        _assert_scores_match(row, *scores)
        differs |= row["logprob"] != scores[0]
    assert differs  # the stand-in BLAS did change the last bits


def _assert_scores_match(row, logprob, first, ranks):
    """A trial row's scores equal a whole-context forward's, to float32 rounding."""
    # a sum over the answer's tokens: each term within the tolerance
    assert row["logprob"] == pytest.approx(logprob, rel=FORWARD_RTOL, abs=FORWARD_ATOL * row["answer_tokens"])
    assert row["first_token_logprob"] == pytest.approx(first, rel=FORWARD_RTOL, abs=FORWARD_ATOL)
    assert ranks[0] <= row["first_token_rank"] <= ranks[1]


def test_needles_sit_at_sentence_ends_and_at_their_depth(lm, passkey_run):
    _, tok, _ = lm
    config = passkey_run[0]
    trial = build_trials(config, tok)[0]
    for length in config.lengths:
        cells = [layout(trial, length, d) for d in config.depths]
        assert cells[0].position == 0 and cells[-1].position <= cells[-1].fill
        assert [c.position for c in cells] == sorted(c.position for c in cells)
        for c in cells[1:]:
            assert tok.decode(trial.haystack[c.position - 1:c.position].tolist()).rstrip()[-1] in ".!?"
            assert c.position > round(c.depth / 100 * c.fill) - 20  # moved back by less than a sentence
    text = tok.decode(context_tokens(trial, layout(trial, 320, 40)))
    assert text.startswith(recall.PASSKEY_HEADER) and text.endswith("\n" + recall.PASSKEY_QUESTION)
    assert f"The pass key is {trial.answer_text.strip()}. Remember it." in text


def test_tokens_fed_follow_the_cost_model(lm, passkey_run, haystack):
    model, tok, _ = lm
    config, result, fed = passkey_run
    assert fed == sum(result.tokens_fed.values())
    trials = build_trials(config, tok)
    jobs = [(t, layout(t, n, d)) for t in trials for n in config.lengths for d in config.depths]
    # the filler haystack is shared by every trial: its prefix is read once, to the deepest needle
    assert result.tokens_fed["prefix"] == len(trials[0].header) + max(c.position for _, c in jobs)
    assert result.tokens_fed["continuation"] == sum(
        len(t.needle) + c.fill - c.position + len(t.question) - 1 for t, c in jobs)
    assert result.tokens_fed["answer"] == sum(len(t.answer) for t, _ in jobs)
    every_cell_whole = sum(c.length + len(t.answer) for t, c in jobs)
    assert fed < 0.7 * every_cell_whole
    # a corpus haystack differs per trial (random offsets): one prefix pass per trial
    counter = CountingModel(model)
    needle = ProbeConfig(task="needle", haystack=haystack, **GRID)
    res = probe(counter, tok, needle, progress=False)
    trials = build_trials(needle, tok)
    assert len({t.haystack_offset for t in trials}) == 2
    assert res.tokens_fed["prefix"] == sum(max(layout(t, n, d).position for n in needle.lengths
                                               for d in needle.depths) for t in trials)
    assert counter.fed == sum(res.tokens_fed.values())
    row = res.trials[0]
    _assert_scores_match(row, *_whole_context_scores(model, tok, needle, row)[2:])


def test_exact_match_when_generation_gives_the_answer(lm, monkeypatch):
    model, tok, _ = lm

    def answers(model, tokenizer, states, prompts, config, **kw):
        return [Generation(i, " 4242\nand more", [1], "stop", 0) for i in range(len(prompts))]

    monkeypatch.setattr(recall, "generate", answers)
    grid = dict(GRID, trials=1, depths=[50])
    right = probe(model, tok, ProbeConfig(task="needle", answer="4242", **grid), progress=False)
    wrong = probe(model, tok, ProbeConfig(task="needle", answer="42", **grid), progress=False)
    assert all(r["exact_match"] for r in right.trials) and all(c["accuracy"] == 1.0 for c in right.cells)
    assert not any(r["exact_match"] for r in wrong.trials) and all(c["accuracy"] == 0.0 for c in wrong.cells)
    assert answer_matches(" Eat a  sandwich, then", "eat a sandwich") and not answer_matches("12345", "1234")


def test_files_are_written(tmp_path, passkey_run):
    result = passkey_run[1]
    files = write_results(result, tmp_path / "probe")
    assert pq.read_table(files["trials_parquet"]).num_rows == 12
    assert pq.read_table(files["cells_parquet"]).num_rows == 6
    with open(files["cells_csv"]) as f:
        cells = list(csv.DictReader(f))
    assert [(int(c["length"]), float(c["depth"])) for c in cells] == [(n, d) for n in (320, 480) for d in (0, 40, 100)]
    assert {"accuracy", "mean_logprob", "median_first_token_rank"} <= set(cells[0])
    assert files["heatmap"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "tiny7" in recall.heatmap_title(result, "accuracy")


def test_command_line(lm, tmp_path, capsys):
    _, _, model_path = lm
    parser = build_parser()
    tok_path = byte_tokenizer_file(tmp_path / "bytes.json")
    args = parser.parse_args(["probe", "--model", str(model_path), "--tokenizer", str(tok_path), "--lengths", "300",
                              "--depths", "0,100", "--trials", "1", "--chunk-len", "128", "--out", str(tmp_path / "p"),
                              "--quiet", "--metric", "logprob"])
    assert args.func(args) == 0
    assert (tmp_path / "p" / "heatmap.png").is_file() and (tmp_path / "p" / "trials.csv").is_file()
    assert "results in" in capsys.readouterr().out


def test_settings_are_checked(lm):
    _, tok, _ = lm
    assert parse_lengths("512, 2k,1M,1.5k") == [512, 2048, 1 << 20, 1536]
    assert parse_depths("0,12.5,100") == [0.0, 12.5, 100.0]
    with pytest.raises(ValueError, match="bad context length '2x'"):
        parse_lengths("512,2x")
    with pytest.raises(ValueError, match="depths must be percentages"):
        ProbeConfig(depths=[0, 120])
    with pytest.raises(ValueError, match="only be set with task 'needle'"):
        ProbeConfig(answer="x")
    with pytest.raises(ValueError, match="context length 200 is shorter than the header, needle and question"):
        probe(None, tok, ProbeConfig(lengths=[200, 400]), progress=False)
