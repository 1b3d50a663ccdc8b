"""Human review: sampling, statistics, the server's refusals, and the page in a real browser."""

import csv
import http.client
import json
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.conftest import sine, write_manifest
from tests.tools.test_compare import SPEAKERS, hypothesis, make_run
from whisper_finetuning.analysis.review import data as review_data
from whisper_finetuning.analysis.review import report as review_report
from whisper_finetuning.analysis.review import stats as review_stats
from whisper_finetuning.analysis.review.server import ReviewSession, Utterance, make_server
from whisper_finetuning.analysis.review.store import (
    JudgmentLog,
    judgments_path,
    latest,
    read_judgments,
)
from whisper_finetuning.review import main as review_main

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
MANIFEST_COLUMNS = ("ID", "duration", "wav", "spk_id", "dialect", "wrd")

# Three epochs: 1 has the lowest loss, 2 the lowest WER, 3 is the last.
EPOCHS = [
    {"epoch": 1, "WER": 20.0, "loss": 1.40},
    {"epoch": 2, "WER": 15.0, "loss": 1.50},
    {"epoch": 3, "WER": 18.0, "loss": 1.45},
]
# id: (dialect, speaker, reference, {epoch: transcript}, audio suffix)
UTTERANCES = {
    "u1": ("a", "s1", "the cat sat on the mat", {
        1: "the cat sat on the mat", 2: "the cat sat on a mat", 3: "a cat sat on a hat"}, "wav"),
    "u2": ("a", "s2", "good morning to you", {
        1: "good morning to you", 2: "good morning to you", 3: "could morning two you"}, "wav"),
    "u3": ("b", "s3", "see you later", {
        1: "see you later", 2: "see ya later", 3: "sea you ladder"}, "wav"),
    "u4": ("b", "s3", "thank you very much", {
        1: "thank you much", 2: "thank you very much", 3: "thank you very much"}, "flac"),
    "u5": ("b", "s4", "all agree here", {
        1: "All agree here.", 2: "all agree here", 3: "all agree here"}, "wav"),
}  # fmt: skip
# Disagreement ranks u1 = u3 (2.0) > u2 (4/3) > u4 (2/3); u5 agrees. Interleaved by dialect
# (a before b on equal scores), then by speaker: u1, u3, u2, u4.
REVIEW_ORDER = ["u1", "u3", "u2", "u4"]
# The last word of each reviewer in the end-to-end test, in epochs: (best, acceptable, correction).
# alice judges in the browser (u1 first with best 2, then changes her mind to 1).
SCENARIO = {
    ("alice", "u1"): ([1], {2: True, 3: False}, ""),
    ("alice", "u3"): ([1], {1: True, 3: False}, ""),
    ("alice", "u2"): ("tie", {}, "good morning to ewe"),
    ("alice", "u4"): ([2, 3], {1: False, 2: True, 3: True}, ""),
    ("bob", "u1"): ([2], {1: True, 2: True, 3: False}, ""),
    ("bob", "u3"): ([1], {1: True, 2: False, 3: True}, ""),
    ("bob", "u2"): ([1, 2], {1: True, 2: True, 3: False}, "good morning to you all"),
}
MIN_WER_EPOCH = 2


def make_experiment(root, run_json=True):
    """A train.py-shaped experiment folder with three validated epochs and real audio files."""
    exp, data = root / "exp", root / "data"
    (exp / "valid").mkdir(parents=True)
    (data / "wav").mkdir(parents=True)
    (exp / "epochs.jsonl").write_text("".join(json.dumps(e) + "\n" for e in EPOCHS))
    rows = []
    for utt_id, (dialect, spk, ref, _, suffix) in UTTERANCES.items():
        sine(data / "wav" / f"{utt_id}.{suffix}", 0.5)
        row = {"ID": utt_id, "duration": 0.5, "wav": f"$data_root/wav/{utt_id}.{suffix}"}
        rows.append({**row, "spk_id": spk, "dialect": dialect, "wrd": ref})
    (exp / "manifests").mkdir()
    manifest = write_manifest(exp / "manifests" / "valid.csv", rows, MANIFEST_COLUMNS)
    for epoch in (1, 2, 3):
        with open(exp / "valid" / f"utterances_epoch{epoch}.jsonl", "w") as out:
            for utt_id, (dialect, spk, ref, hyps, _) in UTTERANCES.items():
                words = len(ref.split())
                record = {"id": utt_id, "ref": ref, "hyp": hyps[epoch], "word_errors": 0}
                record.update(words=words, char_errors=0, chars=len(ref))
                out.write(json.dumps({**record, "dialect": dialect, "spk_id": spk}) + "\n")
    if run_json:
        run = {"valid_csv": str(manifest), "data_folder": str(data)}
        (exp / "run.json").write_text(json.dumps({**run, "group_columns": ["spk_id", "dialect"]}))
    else:  # an older run: the manifest in EXP/manifests, data_folder in hyperparams.yaml
        (exp / "hyperparams.yaml").write_text(f"data_folder: {data}\ngroup_columns: [dialect]\n")
    return exp


# ---------------------------------------------------------------- sampling --------------------


def test_disagreement_is_the_mean_pairwise_word_edit_distance():
    hyps = UTTERANCES["u1"][3]
    assert review_data.disagreement([hyps[1], hyps[2], hyps[3]]) == 2.0  # (1 + 3 + 2) / 3
    assert review_data.disagreement(list(UTTERANCES["u2"][3].values())) == pytest.approx(4 / 3)
    assert review_data.disagreement(list(UTTERANCES["u5"][3].values())) == 0.0  # case, punct.


def test_sampling_ranks_by_disagreement_and_takes_turns_between_groups(tmp_path):
    exp = make_experiment(tmp_path)
    transcripts = review_data.load_transcripts(exp, [1, 2, 3])
    sampled = review_data.sample_utterances(transcripts, ["dialect", "spk_id"], n=10)
    assert [(u["id"], s) for u, s in sampled] == [
        ("u1", 2.0),
        ("u3", 2.0),
        ("u2", pytest.approx(4 / 3)),
        ("u4", pytest.approx(2 / 3)),
    ]
    two = review_data.sample_utterances(transcripts, ["dialect", "spk_id"], n=2)
    assert [u["id"] for u, _ in two] == ["u1", "u3"]  # one per dialect, not the top two


def test_interleave_covers_every_group_before_any_second_utterance():
    scores = {"a1": 9, "a2": 8, "a3": 7, "b1": 1, "c1": 5, "c2": 4}
    utts = [{"id": i, "dialect": i[0]} for i in scores]
    ordered = review_data.interleave(utts, ["dialect"], lambda u: scores[u["id"]])
    assert [u["id"] for u in ordered] == ["a1", "c1", "b1", "a2", "c2", "a3"]
    nested = [{"id": i, "dialect": "x", "spk_id": s} for i, s in (("p", 1), ("q", 1), ("r", 2))]
    scores.update(p=3, q=2, r=1)
    ordered = review_data.interleave(nested, ["dialect", "spk_id"], lambda u: scores[u["id"]])
    assert [u["id"] for u in ordered] == ["p", "r", "q"]  # speaker 2 before speaker 1's second


def test_group_order_puts_speakers_last():
    present = {"spk_id": "s", "dialect": "d", "id": "u"}
    assert review_data.group_order(["spk_id", "dialect", "accent"], present) == [
        "dialect",
        "spk_id",
    ]


def test_candidates_are_min_wer_min_loss_and_last_with_earlier_epoch_on_ties():
    epochs = {e["epoch"]: e for e in EPOCHS}
    assert review_data.candidate_roles(epochs) == {1: ["min-loss"], 2: ["min-WER"], 3: ["last"]}
    tied = {1: {"WER": 10.0, "loss": 1.0}, 2: {"WER": 10.0, "loss": 1.0}}
    assert review_data.candidate_roles(tied) == {1: ["min-WER", "min-loss"], 2: ["last"]}
    by_bleu = {1: {"BLEU": 40.0, "loss": 1.0}, 2: {"BLEU": 52.0, "loss": 0.9}, 3: {"BLEU": 52.0}}
    by_bleu[3]["loss"] = 1.1
    assert review_data.candidate_roles(by_bleu, "BLEU") == {
        2: ["max-BLEU", "min-loss"],
        3: ["last"],
    }


def test_word_diff_aligns_hypothesis_words_to_the_reference():
    assert review_data.word_diff("thank you very much", "Thank you much!") == [
        ["eq", "Thank", "thank"],
        ["eq", "you", "you"],
        ["del", None, "very"],
        ["eq", "much!", "much"],
    ]
    assert review_data.word_diff("see you", "sea you too") == [
        ["sub", "sea", "see"],
        ["eq", "you", "you"],
        ["ins", "too", None],
    ]


def test_blind_options_merge_identical_transcripts_and_hide_epochs():
    hyps = UTTERANCES["u4"][3]
    alice = review_data.blind_options("alice", "u4", hyps)
    assert alice == review_data.blind_options("alice", "u4", hyps)  # stable across calls
    assert sorted(tuple(epochs) for _, _, epochs in alice) == [(1,), (2, 3)]
    assert [label for label, _, _ in alice] == ["A", "B"]
    orders = {
        name: [[text for _, text, _ in review_data.blind_options(name, u, v[3])] for u, v in
               UTTERANCES.items()]
        for name in ("alice", "bob")
    }  # fmt: skip
    assert orders["alice"] != orders["bob"]  # shuffled per reviewer


def test_manifest_falls_back_to_hyperparams_with_a_relative_data_folder(tmp_path):
    """No run.json: EXP/manifests/valid.csv, and data_folder relative to where the run started."""
    exp = tmp_path / "results" / "demo" / "1986"
    (exp / "manifests").mkdir(parents=True)
    (tmp_path / "data" / "corpus").mkdir(parents=True)
    (exp / "hyperparams.yaml").write_text(
        "seed: 1986\n__set_seed: !apply:speechbrain.utils.seed_everything [1986]\n"
        "output_folder: results/demo/1986\ndata_folder: data/corpus\ngroup_columns: [dialect]\n"
    )
    source = review_data.manifest_source(exp)
    assert source.valid_csv == exp / "manifests" / "valid.csv"
    assert source.data_folder == tmp_path / "data" / "corpus"
    assert source.group_columns == ["dialect"]
    assert review_data.audio_reference({"wav": "$data_root/w/x.flac"}, source.data_folder) == (
        str(tmp_path / "data" / "corpus" / "w" / "x.flac")
    )
    assert review_data.audio_type("x.flac") == "audio/flac"


# ---------------------------------------------------------------- statistics ------------------


def test_wilson_interval_matches_published_values():
    lo, hi = review_stats.wilson(7, 10)
    assert (round(lo, 4), round(hi, 4)) == (0.3968, 0.8922)
    assert review_stats.wilson(0, 10)[0] == 0.0
    assert review_stats.wilson(0, 0) is None


def test_cohen_kappa_matches_the_textbook_example():
    """50 items: yes/yes 20, yes/no 5, no/yes 10, no/no 15 -> p_o 0.7, p_e 0.5, kappa 0.4."""
    pairs = [("y", "y")] * 20 + [("y", "n")] * 5 + [("n", "y")] * 10 + [("n", "n")] * 15
    observed, kappa = review_stats.cohen_kappa(pairs)
    assert observed == pytest.approx(0.7) and kappa == pytest.approx(0.4)
    assert review_stats.cohen_kappa([("y", "y")] * 3) == (1.0, None)


def test_later_judgments_supersede_earlier_ones(tmp_path):
    log = JudgmentLog(tmp_path / "j.jsonl")
    for reviewer, best in (("a", [1]), ("b", [2]), ("a", [2])):
        log.append({"reviewer": reviewer, "id": "u1", "best": best})
    with open(log.path, "a") as out:
        out.write('{"reviewer": "a", "id": "u1", "be')  # a crash mid-line
    kept = latest(read_judgments(log.path))
    assert {key: j["best"] for key, j in kept.items()} == {("a", "u1"): [2], ("b", "u1"): [2]}


def test_export_command_only_for_a_kept_checkpoint(tmp_path):
    ckpt = tmp_path / "save" / "CKPT+2026-11-22+07-00-00+00"
    ckpt.mkdir(parents=True)
    (ckpt / "CKPT.yaml").write_text("# yamllint disable\nWER: 15.0\nepoch: 3\nloss: 1.4\n")
    assert review_report.export_command(tmp_path, 3) == (
        f"python -m whisper_finetuning.export_hf {tmp_path} DEST --epoch 3"
    )
    assert review_report.export_command(tmp_path, 2) is None


# ---------------------------------------------------------------- the server ------------------


@pytest.fixture
def server(tmp_path):
    """An in-process server over the synthetic experiment (all four disagreeing utterances)."""
    exp = make_experiment(tmp_path)
    source = review_data.manifest_source(exp)
    _, rows = review_data.read_manifest(source)
    utterances = [
        Utterance(
            u,
            UTTERANCES[u][2],
            UTTERANCES[u][3],
            {"dialect": UTTERANCES[u][0]},
            review_data.audio_reference(rows[u], source.data_folder),
        )
        for u in REVIEW_ORDER
    ]
    session = ReviewSession(utterances, [1, 2, 3], JudgmentLog(judgments_path(exp)), "exp")
    httpd = make_server(session, 0)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd, exp
    httpd.shutdown()
    httpd.server_close()


def request(port, method, path, body=None, headers=None):
    """(status, headers, body bytes) of one raw request (the path is sent as is)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    connection.request(method, path, body=body, headers=headers or {})
    response = connection.getresponse()
    result = response.status, dict(response.getheaders()), response.read()
    connection.close()
    return result


def post(port, payload):
    """POST a judgment; payload may be raw bytes."""
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    json_type = {"Content-Type": "application/json"}
    status, _, data = request(port, "POST", "/api/judgment", body, json_type)
    return status, json.loads(data)


def option_of(port, reviewer, utt_id, epochs):
    """The label under which ``reviewer`` sees the option of exactly these epochs."""
    status, _, data = request(port, "GET", f"/api/items?reviewer={reviewer}")
    item = next(i for i in json.loads(data)["items"] if i["id"] == utt_id)
    hyps = UTTERANCES[utt_id][3]
    return next(o["label"] for o in item["options"] if o["hyp"] == hyps[epochs[0]])


def test_bad_requests_get_4xx_and_change_nothing(server):
    httpd, exp = server
    port = httpd.server_address[1]
    assert httpd.server_address[0] == "127.0.0.1"
    with pytest.raises(ConnectionRefusedError):  # not listening on other addresses
        socket.create_connection(("127.0.0.2", port), timeout=5)
    label = option_of(port, "alice", "u1", [2])
    assert post(port, {"reviewer": "alice", "id": "u1", "best": label})[0] == 200
    before = judgments_path(exp).read_bytes()
    good = {"reviewer": "alice", "id": "u1", "best": label}
    for payload, status in (
        (b"{not json", 400),
        (b"\xff\xfe", 400),
        (b"[1, 2]", 400),
        ({**good, "id": "nope"}, 404),
        ({**good, "id": "../../etc/passwd"}, 404),
        ({**good, "id": "u5"}, 404),  # in the manifest, not under review
        ({**good, "best": "Z"}, 400),
        ({**good, "best": [2]}, 400),
        ({**good, "acceptable": {label: "yes"}}, 400),
        ({**good, "acceptable": {"Q": True}}, 400),
        ({**good, "reviewer": ""}, 400),
        ({**good, "reviewer": "../x"}, 400),
        ({**good, "correction": 3}, 400),
        ({**good, "epoch": 2}, 400),
    ):
        assert post(port, payload)[0] == status, payload
    for path in (
        "/audio/../../etc/passwd",
        "/audio/..%2F..%2Fetc%2Fpasswd",
        "/audio/%2Fetc%2Fpasswd",
        "/audio/u5",
        "/audio/",
        "/etc/passwd",
        "/api/items",
        "/api/items?reviewer=..%2F..",
    ):
        assert 400 <= request(port, "GET", path)[0] < 500, path
    json_type = {"Content-Type": "application/json"}
    assert request(port, "POST", "/api/other", b"{}", json_type)[0] == 404
    big = b'{"note": "' + b"x" * 70000 + b'"}'
    assert request(port, "POST", "/api/judgment", big, json_type)[0] == 413
    body = json.dumps(good).encode()  # a valid judgment, but as another site could send it
    assert request(port, "POST", "/api/judgment", body, {"Content-Type": "text/plain"})[0] == 415
    rebound = {**json_type, "Host": f"attacker.example:{port}"}
    assert request(port, "POST", "/api/judgment", body, rebound)[0] == 403
    assert request(port, "GET", "/audio/u1", headers={"Host": "attacker.example"})[0] == 403
    assert judgments_path(exp).read_bytes() == before


def test_audio_is_served_by_utterance_id_with_its_type_and_ranges(server):
    httpd, exp = server
    port = httpd.server_address[1]
    wav = (exp.parent / "data" / "wav" / "u1.wav").read_bytes()
    status, headers, body = request(port, "GET", "/audio/u1")
    assert (status, headers["Content-Type"], body) == (200, "audio/wav", wav)
    status, headers, body = request(port, "GET", "/audio/u1", headers={"Range": "bytes=10-19"})
    assert (status, headers["Content-Range"], body) == (206, f"bytes 10-19/{len(wav)}", wav[10:20])
    status, headers, body = request(port, "GET", "/audio/u4")
    assert (status, headers["Content-Type"]) == (200, "audio/flac")
    assert body == (exp.parent / "data" / "wav" / "u4.flac").read_bytes()


def test_items_hide_the_epochs(server):
    httpd, _ = server
    status, _, data = request(httpd.server_address[1], "GET", "/api/items?reviewer=alice")
    items = json.loads(data)["items"]
    assert [i["id"] for i in items] == REVIEW_ORDER
    assert {key for i in items for o in i["options"] for key in o} == {"label", "hyp", "diff"}
    assert [len(i["options"]) for i in items] == [3, 3, 2, 2]  # identical transcripts merged
    assert b"epoch" not in data.lower()


# ---------------------------------------------------------------- end to end in a browser -----


def browser():
    """Headless Debian chromium through chromedriver (no download: both come from apt)."""
    webdriver = pytest.importorskip("selenium.webdriver")
    if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
        pytest.skip("Debian chromium and chromium-driver are not installed (make system-packages)")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--mute-audio"):
        options.add_argument(flag)
    options.add_argument("--autoplay-policy=no-user-gesture-required")
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)


@pytest.fixture
def cli_server():
    """Starts the review server (``--port 0``) and returns its URL; stops it after."""
    processes = []

    def start(*args):
        process = subprocess.Popen(
            [sys.executable, "-m", "whisper_finetuning.review", *map(str, args), "--port", "0"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        processes.append(process)
        for line in process.stdout:
            if line.startswith("open "):
                return line.split()[1]
        pytest.fail(f"the server did not start: {process.stderr.read()}")

    yield start
    for process in processes:
        process.terminate()
        process.wait(timeout=10)


def wait_for(predicate, what, seconds=20):
    """Poll until ``predicate()`` is true (a bounded wait for the page or the server)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    pytest.fail(f"timed out waiting for {what}")


def lines(exp):
    path = judgments_path(exp)
    return len(path.read_text().splitlines()) if path.exists() else 0


@pytest.mark.slow
def test_review_end_to_end_in_a_browser(tmp_path, cli_server):
    """Judge by click and by keyboard, reload, see the marks kept, summarize exactly."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    exp = make_experiment(tmp_path)
    ckpt = exp / "save" / "CKPT+2026-11-22+07-00-00+00"
    ckpt.mkdir(parents=True)
    (ckpt / "CKPT.yaml").write_text("epoch: 1\nWER: 20.0\nloss: 1.4\n")
    url = cli_server(exp)
    assert url.startswith("http://127.0.0.1:")
    port = int(url.rstrip("/").rsplit(":", 1)[1])
    driver = browser()
    try:
        driver.get(url)
        name = driver.find_element(By.ID, "name")  # no --reviewer: the page asks
        wait_for(name.is_displayed, "the name prompt")
        name.send_keys("alice", Keys.ENTER)
        wait_for(lambda: driver.find_element(By.ID, "app").is_displayed(), "the page")
        assert "epoch" not in driver.page_source.lower()
        audio = driver.find_element(By.ID, "audio")
        assert audio.get_attribute("controls") is not None
        wait_for(lambda: driver.execute_script("return arguments[0].duration", audio) > 0.4,
                 "the audio to load")  # fmt: skip

        def option(utt_id, epoch):
            """The displayed option row holding ``epoch``'s transcript."""
            label = option_of(port, "alice", utt_id, [epoch])
            return driver.find_element(By.CSS_SELECTOR, f'.option[data-label="{label}"]')

        def position(utt_id, epoch):
            rows = driver.find_elements(By.CSS_SELECTOR, ".option")
            return [r.get_attribute("data-label") for r in rows].index(
                option_of(port, "alice", utt_id, [epoch])
            ) + 1

        body = driver.find_element(By.TAG_NAME, "body")
        body.send_keys(" ")  # Space plays the utterance
        wait_for(lambda: driver.execute_script("return arguments[0].currentTime", audio) > 0,
                 "the audio to play")  # fmt: skip
        body.send_keys(" ")
        wait_for(lambda: audio.get_property("paused"), "the audio to pause")
        # u1 by clicking: best epoch 2, epoch 2 acceptable, epoch 3 not.
        option("u1", 2).find_element(By.CLASS_NAME, "key").click()
        option("u1", 2).find_element(By.CSS_SELECTOR, ".accept .yes").click()
        option("u1", 3).find_element(By.CSS_SELECTOR, ".accept .no").click()
        wait_for(lambda: lines(exp) == 3, "3 saved lines")
        assert "best" in option("u1", 2).get_attribute("class")
        # u3 by keyboard: best epoch 1, Shift+N: epoch 1 acceptable, epoch 3 acceptable -> not.
        body.send_keys(Keys.ARROW_RIGHT)
        wait_for(lambda: "2 of 4" in driver.find_element(By.ID, "position").text, "u3")
        body.send_keys(str(position("u3", 1)))
        for epoch in (1, 3, 3):
            body.send_keys(Keys.SHIFT + str(position("u3", epoch)))
        wait_for(lambda: lines(exp) == 7, "7 saved lines")
        # u2: a tie and a corrected transcript.
        body.send_keys(Keys.ARROW_RIGHT, "t", "c")
        driver.switch_to.active_element.send_keys("good morning to ewe", Keys.ESCAPE)
        wait_for(lambda: '"good morning to ewe"' in judgments_path(exp).read_text(), "the text")
        saved = lines(exp)  # typing saves one line or more, as the pauses fall
        assert driver.find_element(By.ID, "count").text == "3 / 4 judged"

        status = driver.find_element(By.ID, "status")
        wait_for(lambda: status.text == "saved \u2713", "no save in flight")
        driver.refresh()  # nothing is lost: the page restores the marks from the server
        wait_for(lambda: driver.find_element(By.ID, "app").is_displayed(), "the reloaded page")
        wait_for(lambda: "4 of 4" in driver.find_element(By.ID, "position").text, "u4 first")
        assert driver.find_element(By.ID, "count").text == "3 / 4 judged"
        body = driver.find_element(By.TAG_NAME, "body")
        # u4: best is the option of epochs 2 and 3 (the same words), acceptable; epoch 1 not.
        option("u4", 2).find_element(By.CLASS_NAME, "hyp").click()
        option("u4", 2).find_element(By.CSS_SELECTOR, ".accept .yes").click()
        option("u4", 1).find_element(By.CSS_SELECTOR, ".accept .no").click()
        driver.find_elements(By.CSS_SELECTOR, ".dot")[0].click()  # back to u1
        assert "best" in option("u1", 2).get_attribute("class")
        assert "on" in option("u1", 2).find_element(By.CSS_SELECTOR, ".yes").get_attribute("class")
        assert "on" in option("u1", 3).find_element(By.CSS_SELECTOR, ".no").get_attribute("class")
        body.send_keys(str(position("u1", 1)))  # changes her mind: epoch 1 is best after all
        wait_for(lambda: lines(exp) == saved + 4, "4 more saved lines")
        body.send_keys(Keys.ARROW_RIGHT, Keys.ARROW_RIGHT)
        assert driver.find_element(By.ID, "correction").get_attribute("value") == (
            "good morning to ewe"
        )
        assert "on" in driver.find_element(By.ID, "tie").get_attribute("class")
        assert driver.find_element(By.ID, "count").text == "4 / 4 judged"
    finally:
        driver.quit()

    # A second reviewer, through the same API the page uses.
    for (reviewer, utt_id), (best, acceptable, correction) in SCENARIO.items():
        if reviewer != "bob":
            continue
        labels = {e: option_of(port, "bob", utt_id, [e]) for e in (1, 2, 3)}
        payload = {"reviewer": "bob", "id": utt_id, "best": labels[best[0]]}
        payload["acceptable"] = {labels[e]: ok for e, ok in acceptable.items()}
        assert post(port, {**payload, "correction": correction})[0] == 200

    done = subprocess.run(
        [sys.executable, "-m", "whisper_finetuning.review", "summarize", str(exp)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    kept = latest(read_judgments(judgments_path(exp)))
    assert {key: scenario_of(j) for key, j in kept.items()} == SCENARIO
    summary = json.loads((exp / "review" / "summary.json").read_text())
    check_stats(summary)
    check_outputs(summary, exp)
    assert done.stdout.splitlines()[0] == review_report.headline(summary)
    assert f"export it: python -m whisper_finetuning.export_hf {exp} DEST --epoch 1" in done.stdout
    assert "humans prefer epoch 1" in (exp / "review" / "summary.md").read_text()


def scenario_of(judgment):
    """A logged judgment in the terms of ``SCENARIO``."""
    acceptable = {int(e): ok for e, ok in judgment["acceptable"].items()}
    return judgment["best"], acceptable, judgment["correction"]


def scenario_log():
    """``SCENARIO`` as the judgment log holds it, reduced to the last word per utterance."""
    records = {}
    for second, ((reviewer, utt_id), (best, acceptable, correction)) in enumerate(SCENARIO.items()):
        dialect, spk = UTTERANCES[utt_id][:2]
        records[(reviewer, utt_id)] = {
            "time": f"2026-11-22T08:00:{second:02d}.000+00:00",
            "reviewer": reviewer,
            "id": utt_id,
            "candidates": [1, 2, 3],
            "best": best,
            "acceptable": {str(e): ok for e, ok in acceptable.items()},
            "correction": correction,
            "note": "",
            "groups": {"dialect": dialect, "spk_id": spk},
        }
    return records


def test_summary_numbers_match_hand_counts():
    check_stats(review_stats.summarize(scenario_log(), MIN_WER_EPOCH, ["dialect", "spk_id"]))


def test_corrections_keep_the_latest_and_flag_disagreement():
    kept, conflicting = review_report.corrections(scenario_log())
    assert (kept, conflicting) == ({"u2": "good morning to you all"}, ["u2"])


def check_stats(summary):
    """The numbers, counted by hand from ``SCENARIO`` (min-WER is epoch 2)."""

    def rate(k, n):
        return {"k": k, "n": n, "rate": k / n, "ci95": pytest.approx(review_stats.wilson(k, n))}

    assert summary["reviewers"] == ["alice", "bob"]
    assert (summary["n_judgments"], summary["n_utterances"]) == (7, 4)
    assert (summary["ties"], summary["undecided"]) == (1, 0)
    # Six decided judgments; epoch 1 is best in four, epoch 2 in three, epoch 3 in one.
    assert summary["preference"] == {"1": rate(4, 6), "2": rate(3, 6), "3": rate(1, 6)}
    assert summary["preference"]["1"]["ci95"] == pytest.approx([0.3000, 0.9032], abs=1e-4)
    # Against min-WER (epoch 2): epoch 1 wins u1/alice, u3/alice, u3/bob; loses u4/alice, u1/bob.
    assert summary["head_to_head"] == {
        "1": {"vs": 2, "wins": 3, "losses": 2, **rate(3, 5)},
        "3": {"vs": 2, "wins": 0, "losses": 2, **rate(0, 2)},
    }
    acceptability = summary["acceptability"]
    assert acceptability["overall"] == {"1": rate(4, 5), "2": rate(4, 5), "3": rate(2, 6)}
    assert acceptability["per_group"]["dialect"] == {
        "a": {"1": rate(2, 2), "2": rate(3, 3), "3": rate(0, 3)},
        "b": {"1": rate(2, 3), "2": rate(1, 2), "3": rate(2, 3)},
    }
    assert acceptability["per_group"]["spk_id"]["s1"] == {
        "1": rate(1, 1),
        "2": rate(2, 2),
        "3": rate(0, 2),
    }
    # best on u1, u3, u2: ("1","2"), ("1","1"), ("tie","1+2"): p_o 1/3, p_e 2/3 * 1/3 = 2/9.
    assert summary["agreement"]["best"] == [
        {"reviewers": ["alice", "bob"], "n": 3, "agreement": pytest.approx(1 / 3),
         "kappa": pytest.approx(1 / 7)}
    ]  # fmt: skip
    # acceptable, shared marks: u1 e2 (y,y), e3 (n,n); u3 e1 (y,y), e3 (n,y): p_o 3/4, p_e 1/2.
    assert summary["agreement"]["acceptable"] == [
        {"reviewers": ["alice", "bob"], "n": 4, "agreement": 0.75, "kappa": 0.5}
    ]
    verdict = {
        key: summary["verdict"][key] for key in summary["verdict"] if key != "export_command"
    }
    assert verdict == {
        "preferred_epoch": 1,
        "min_wer_epoch": 2,
        "differs_from_min_wer": True,
        "decisive": False,  # 3 wins to 2: the interval [0.23, 0.88] straddles one half
    }


def check_outputs(summary, exp):
    """What ``summarize`` adds to the statistics: candidates, corrections, export command."""
    command = f"python -m whisper_finetuning.export_hf {exp} DEST --epoch 1"
    assert summary["verdict"]["export_command"] == command
    assert summary["candidates"]["2"] == {"roles": ["min-WER"], "WER": 15.0, "loss": 1.5}
    assert summary["corrections"] == {
        "n": 1,
        "conflicting": ["u2"],
        "file": "review/corrections.csv",
    }
    with open(exp / "review" / "corrections.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert rows == [
        {"ID": "u2", "duration": "0.5", "wav": "$data_root/wav/u2.wav", "spk_id": "s2",
         "dialect": "a", "wrd": "good morning to you all"}
    ]  # fmt: skip


def test_cli_presets_reviewer_candidates_and_n_without_run_json(tmp_path, cli_server):
    exp = make_experiment(tmp_path, run_json=False)
    url = cli_server(exp, "--reviewer", "carol", "--candidates", "1,3", "--n", "2")
    port = int(url.rstrip("/").rsplit(":", 1)[1])
    status, _, config = request(port, "GET", "/api/config")
    assert json.loads(config) == {"title": "exp", "reviewer": "carol", "n": 2}
    items = json.loads(request(port, "GET", "/api/items?reviewer=carol")[2])["items"]
    # Epochs 1 and 3 only, by dialect alone: u1 (a, 3 edits) then u3 (b, 2 edits).
    assert [i["id"] for i in items] == ["u1", "u3"]
    assert [i["groups"] for i in items] == [{"dialect": "a"}, {"dialect": "b"}]
    hyps = [sorted(o["hyp"] for o in i["options"]) for i in items]
    assert hyps == [sorted(UTTERANCES[u][3][e] for e in (1, 3)) for u in ("u1", "u3")]
    wav = (tmp_path / "data" / "wav" / "u3.wav").read_bytes()
    assert request(port, "GET", items[1]["audio"])[2] == wav


def test_cli_errors_are_one_line(tmp_path):
    exp = make_experiment(tmp_path)
    for argv, message in (
        ([str(tmp_path / "nowhere")], "epochs.jsonl not found"),
        ([str(exp), "--candidates", "1,7"], "epoch 7 has no validation transcripts"),
        (["summarize", str(exp)], "no judgments"),
    ):
        with pytest.raises(SystemExit) as stopped:
            review_main(argv)
        assert message in str(stopped.value) and str(stopped.value).startswith("error: ")
    shutil.rmtree(exp / "valid")
    with pytest.raises(SystemExit, match="error: "):
        review_main([str(exp)])
    (exp / "epochs.jsonl").write_text('{"epoch": 1, "WER"\n')
    with pytest.raises(SystemExit, match="epochs.jsonl, line 1: not JSON"):
        review_main(["summarize", str(exp)])


def test_summarize_skips_and_counts_foreign_lines_and_ignores_a_torn_last_line(tmp_path, capsys):
    exp = make_experiment(tmp_path)
    lines = [json.dumps(record) for record in scenario_log().values()]
    lines[2:2] = ['{"id": "u1", "best": [1]}', "[1, 2]", "\x00not json"]  # lines 3, 4, 5
    torn = b'{"reviewer": "alice", "id": "u\xc3'  # a crash mid-write, mid-character
    judgments_path(exp).parent.mkdir(parents=True)
    judgments_path(exp).write_bytes("\n".join(lines).encode() + b"\n" + torn)
    review_main(["summarize", str(exp)])
    assert capsys.readouterr().err == (
        f"warning: skipped 3 line(s) of {judgments_path(exp)} that are not judgments "
        "(e.g. line 3)\n"
    )
    summary = json.loads((exp / "review" / "summary.json").read_text())
    check_stats(summary)  # the scenario's numbers: no line lost, none foreign counted


def test_huge_integers_and_deep_nesting_get_400_and_the_server_stays_up(server):
    httpd, exp = server
    port = httpd.server_address[1]
    for body in (
        b'{"reviewer": "alice", "id": "u1", "best": ' + b"9" * 5000 + b"}",
        b"[" * 30_000 + b"]" * 30_000,  # under the size limit, over Python's recursion limit
        b'{"reviewer": "\xff"}',
    ):
        assert post(port, body) == (400, {"error": "body is not JSON"})
    assert not judgments_path(exp).exists()
    label = option_of(port, "alice", "u1", [2])
    assert post(port, {"reviewer": "alice", "id": "u1", "best": label})[0] == 200


# ---------------------------------------------------------------- review across runs ----------

# Word errors per test utterance u0-u5 of each run's selected checkpoint (test_compare's runs:
# speakers s1 s1 s2 s2 s3 s3, dialects north north north north south south). The runs' words
# differ by |errors a - errors b|: u0 0, u1 1, u2 2, u3 3, u4 0, u5 1.
RUN_ERRORS = {"base": [0, 1, 0, 3, 0, 0], "tuned": [0, 0, 2, 0, 0, 1]}
# Most different first, taking turns between dialects (north u3 3, south u5 1), then within
# north between speakers (s1 u1 1, s2 u2 2 after u3): u3, u5, u1, u2; u0 and u4 agree.
RUNS_ORDER = ["u3", "u5", "u1", "u2"]
# (reviewer, utterance): (best, acceptable, correction), in runs.
RUNS_SCENARIO = {
    ("alice", "u3"): (["tuned"], {"tuned": True, "base": False}, ""),
    ("alice", "u5"): (["tuned"], {}, ""),
    ("alice", "u1"): (["base"], {}, ""),
    ("alice", "u2"): ("tie", {}, "one two three for five"),
    ("bob", "u3"): (["tuned"], {"tuned": True, "base": True}, ""),
    ("bob", "u5"): (["tuned"], {}, ""),
    ("bob", "u1"): (["tuned"], {}, ""),
    ("bob", "u2"): (["tuned"], {}, ""),
}


@pytest.fixture
def two_runs(tmp_path):
    """Two finished runs (test_compare's make_run) on one test manifest with real audio; tuned
    selected its epoch 2, whose checkpoint is kept."""
    data = tmp_path / "data"
    (data / "wav").mkdir(parents=True)
    rows = []
    for i, spk in enumerate(SPEAKERS):
        sine(data / "wav" / f"u{i}.wav", 0.5)
        dialect = "south" if spk == "s3" else "north"
        row = {"ID": f"u{i}", "duration": 0.5, "wav": f"$data_root/wav/u{i}.wav", "spk_id": spk}
        rows.append({**row, "dialect": dialect, "wrd": "one two three four five"})
    write_manifest(tmp_path / "test.csv", rows, MANIFEST_COLUMNS)
    folders = {}
    for name, epochs in (("base", ((9.0, 30.0),)), ("tuned", ((9.0, 30.0), (8.0, 20.0)))):
        folder = make_run(tmp_path, name, RUN_ERRORS[name], epochs=epochs)
        run = json.loads((folder / "run.json").read_text())
        (folder / "run.json").write_text(json.dumps({**run, "data_folder": str(data)}))
        folders[name] = folder
    ckpt = folders["tuned"] / "save" / "CKPT+2026-11-22+07-00-00+00"
    ckpt.mkdir()
    (ckpt / "CKPT.yaml").write_text("epoch: 2\nWER: 20.0\nloss: 8.0\n")
    return folders


def label_of(port, reviewer, utt_id, text):
    """The option label under which ``reviewer`` sees transcript ``text`` of ``utt_id``."""
    items = json.loads(request(port, "GET", f"/api/items?reviewer={reviewer}")[2])["items"]
    item = next(i for i in items if i["id"] == utt_id)
    return next(o["label"] for o in item["options"] if o["hyp"] == text)


def run_hyp(run, utt_id):
    return hypothesis(RUN_ERRORS[run][int(utt_id[1:])])


def test_review_across_runs_serves_both_runs_saves_judgments_and_ranks_the_runs(
    two_runs, tmp_path, cli_server, capsys
):
    base, tuned = two_runs["base"], two_runs["tuned"]
    out = tmp_path / "review_out"
    url = cli_server("--runs", base, tuned, "--output-folder", out, "--reviewer", "carol")
    port = int(url.rstrip("/").rsplit(":", 1)[1])
    config = json.loads(request(port, "GET", "/api/config")[2])
    assert config == {"title": "2 runs", "reviewer": "carol", "n": 4}
    status, _, raw = request(port, "GET", "/api/items?reviewer=alice")
    items = json.loads(raw)["items"]
    assert [i["id"] for i in items] == RUNS_ORDER
    assert [sorted(o["hyp"] for o in i["options"]) for i in items] == [
        sorted(run_hyp(r, i["id"]) for r in RUN_ERRORS) for i in items
    ]
    assert items[0]["groups"] == {"dialect": "north", "spk_id": "s2"}
    assert b"base" not in raw and b"tuned" not in raw  # blind: no run is named
    assert request(port, "GET", items[1]["audio"])[2] == (tmp_path / "data/wav/u5.wav").read_bytes()

    for (reviewer, utt_id), (best, acceptable, correction) in RUNS_SCENARIO.items():
        labels = {r: label_of(port, reviewer, utt_id, run_hyp(r, utt_id)) for r in RUN_ERRORS}
        payload = {"reviewer": reviewer, "id": utt_id, "correction": correction}
        payload["best"] = best if best == "tie" else labels[best[0]]
        payload["acceptable"] = {labels[r]: ok for r, ok in acceptable.items()}
        assert post(port, payload)[0] == 200
    saved = [json.loads(line) for line in judgments_path(out).read_text().splitlines()]
    assert [(j["reviewer"], j["id"]) for j in saved] == list(RUNS_SCENARIO)
    first = {key: value for key, value in saved[0].items() if key != "time"}
    assert {**first, "options": sorted(first["options"])} == {
        "reviewer": "alice",
        "id": "u3",
        "candidates": ["base", "tuned"],
        "options": [["base"], ["tuned"]],
        "best": ["tuned"],
        "acceptable": {"tuned": True, "base": False},
        "correction": "",
        "note": "",
        "groups": {"dialect": "north", "spk_id": "s2"},
    }
    assert not (base / "review").exists() and not (tuned / "review").exists()
    marks = json.loads(request(port, "GET", "/api/items?reviewer=bob")[2])["marks"]
    assert sorted(marks) == sorted(RUNS_ORDER)  # a reload restores them

    review_main(["summarize", "--runs", str(base), str(tuned), "--output-folder", str(out)])
    summary = json.loads((out / "review" / "summary.json").read_text())
    # Seven decided judgments (alice's u2 is a tie): tuned best in 6, base in 1. Wilson 95%
    # with z = 1.96: 6/7 -> center 1.1315 / 1.5488 = 0.7306, half 0.2437: [0.4869, 0.9743].
    assert summary["ranking"] == [
        {"rank": 1, "run": "tuned", "k": 6, "n": 7, "rate": pytest.approx(6 / 7),
         "ci95": pytest.approx([0.4869, 0.9743], abs=1e-4)},
        {"rank": 2, "run": "base", "k": 1, "n": 7, "rate": pytest.approx(1 / 7),
         "ci95": pytest.approx([0.0257, 0.5131], abs=1e-4)},
    ]  # fmt: skip
    # base against tuned: wins alice's u1, loses six; the tie counts for neither. The interval
    # reaches above one half, so the preference is not decisive.
    assert summary["head_to_head"] == {
        "base": {"vs": "tuned", "wins": 1, "losses": 6, "k": 1, "n": 7,
                 "rate": pytest.approx(1 / 7), "ci95": pytest.approx([0.0257, 0.5131], abs=1e-4)}
    }  # fmt: skip
    assert (summary["ties"], summary["undecided"], summary["n_utterances"]) == (1, 0, 4)
    assert summary["acceptability"]["overall"] == {
        "base": {"k": 1, "n": 2, "rate": 0.5, "ci95": pytest.approx(review_stats.wilson(1, 2))},
        "tuned": {"k": 2, "n": 2, "rate": 1.0, "ci95": pytest.approx(review_stats.wilson(2, 2))},
    }
    # best: u3 (tuned, tuned), u5 (tuned, tuned), u1 (base, tuned), u2 (tie, tuned): p_o 1/2,
    # p_e = 1/2 x 1 (tuned): kappa 0.
    assert summary["agreement"]["best"] == [
        {"reviewers": ["alice", "bob"], "n": 4, "agreement": 0.5, "kappa": 0.0}
    ]
    export = f"python -m whisper_finetuning.export_hf {tuned.resolve()} DEST --epoch 2"
    assert summary["verdict"] == {
        "preferred_run": "tuned",
        "decisive": False,
        "export_command": export,
    }
    assert summary["test_set"] == "test"
    assert summary["candidates"] == {
        "base": {"folder": str(base.resolve()), "selection_metric": "WER",
                 "selected_epoch": 1, "WER": pytest.approx(100 * 4 / 30)},
        "tuned": {"folder": str(tuned.resolve()), "selection_metric": "WER",
                  "selected_epoch": 2, "WER": pytest.approx(100 * 3 / 30)},
    }  # fmt: skip
    with open(out / "review" / "corrections.csv", newline="") as f:
        assert [(r["ID"], r["dialect"], r["wrd"]) for r in csv.DictReader(f)] == [
            ("u2", "north", "one two three for five")
        ]
    printed = capsys.readouterr().out.splitlines()
    assert printed[0] == review_report.runs_headline(summary)
    assert printed[0].startswith("humans prefer run tuned: best in 85.7% [48.7-97.4] (6/7)")
    assert "not decisive; ranking tuned > base; 8 judgment(s) by 2 reviewer(s)" in printed[0]
    assert printed[1] == f"export it: {export}"
    markdown = (out / "review" / "summary.md").read_text()
    assert "| 1 | tuned | 2 | 10.00 | 85.7% [48.7-97.4] (6/7) | (first) | 100.0%" in markdown
    assert "| 2 | base | 1 | 13.33 | 14.3% [2.6-51.3] (1/7) | 14.3% [2.6-51.3] (1/7) |" in markdown


def test_review_across_runs_refusals_are_one_line(two_runs, tmp_path):
    base, tuned = map(str, two_runs.values())
    unfinished = make_run(tmp_path, "unfinished", RUN_ERRORS["base"], finished=False)
    other = make_run(tmp_path, "other", RUN_ERRORS["base"], test_name="other")
    empty = tmp_path / "empty"
    for argv, message in (
        (["--runs", base], "a comparison needs at least two runs, got 1"),
        (["summarize", "--runs", base], "a comparison needs at least two runs, got 1"),
        (["--runs", base, str(unfinished)], f"{unfinished} is unfinished: training has not ended"),
        (["--runs", base, str(other)], "the runs' test sets differ: base has test, other has"),
        ([base, "--runs", base, tuned], f"give an experiment folder or --runs, not both ({base}"),
        (["--runs", base, tuned, "--candidates", "1,2"], "--candidates picks epochs of one run"),
        (["--runs", base, tuned, "--output-folder", tuned], f"--output-folder {tuned} is run"),
        ([], "give an experiment folder, or --runs EXP1 EXP2"),
        (["summarize", "--runs", base, tuned, "--output-folder", str(empty)],
         f"no judgments of these runs in {judgments_path(empty)}: review first"),
    ):  # fmt: skip
        with pytest.raises(SystemExit) as stopped:
            review_main(argv)
        text = str(stopped.value)
        assert text.startswith(f"error: {message}") and "\n" not in text, argv
    assert not empty.exists()
