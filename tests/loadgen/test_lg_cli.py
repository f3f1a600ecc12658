"""fastswitch-bench's command line: the report, the JSON, and bad input (clear message, non-zero
exit, no traceback)."""

from __future__ import annotations

import json
import os
import signal
import threading

import pytest
from polling import eventually_sync

from client.loadgen.progress import ProgressBar, render
from client.loadgen.runner import Live
from fastswitch.bench import main
from fastswitch.deploy import free_port

QUICK = ["--workload", "fairness", "--duration", "0.3", "--rate", "30", "--no-progress"]
QUICK += ["--tenant-output-lens", "3", "3", "3", "--warmup", "0"]


def test_run_prints_the_table_and_writes_json(lg_fake, capsys, tmp_path):
    addr, _ = lg_fake
    out = tmp_path / "r.json"
    rc = main(
        ["run", "--target", addr, *QUICK, "--ttft-slo", "1", "--tbt-slo", "0.5", "--json", str(out)]
    )
    text = capsys.readouterr().out
    assert rc == 0
    for part in (
        "P99.9",
        "TTFT",
        "TBT",
        "E2E",
        "req/s",
        "SLO (TTFT <= 1000 ms",
        "Jain's",
        "tenant-2",
        "scheduler:",
        "preemptions",
        "swapped",
    ):
        assert part in text, part
    doc = json.loads(out.read_text())
    assert doc["params"]["workload"]["workload"] == "fairness"
    assert doc["params"]["resolved"]["tenants"] == 3
    assert doc["summary"]["finished"] == len(doc["requests"]) > 0
    assert doc["summary"]["ttft"]["p999"] is not None
    assert doc["summary"]["attainment"]["both"] == 1.0
    assert {t["tenant"] for t in doc["summary"]["tenants"]} == {"tenant-0", "tenant-1", "tenant-2"}
    assert doc["requests"][0]["status"] == "ok"


def test_the_api_key_goes_with_every_call(lg_fake, capsys, monkeypatch):
    addr, fake = lg_fake
    monkeypatch.delenv("FASTSWITCH_API_KEY", raising=False)
    rc = main(["run", "--target", addr, *QUICK, "--wait-workers", "1", "--api-key", "sk-bench-01"])
    assert rc == 0 and fake.requests, capsys.readouterr().err
    # stats polls, the requests' shared GenerateMany call: every call carried the key
    assert len(fake.auth) >= 3 and set(fake.auth) == {"Bearer sk-bench-01"}
    assert "sk-bench-01" not in capsys.readouterr().out


def test_ctrl_c_ends_the_run_with_a_partial_report(lg_fake, capsys):
    addr, fake = lg_fake
    fake.token_delay_s = 0.01

    def interrupt_once_running() -> None:
        try:
            eventually_sync(lambda: fake.finished, what="a finished request")
        finally:
            os.kill(os.getpid(), signal.SIGINT)  # the runner's handler takes it

    thread = threading.Thread(target=interrupt_once_running)
    thread.start()
    try:
        rc = main(["--target", addr, *QUICK, "--duration", "30"])
    finally:
        thread.join()
    text = capsys.readouterr().out
    assert rc == 130
    assert "STOPPED EARLY: interrupted (Ctrl-C)" in text and "P99.9" in text
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handler restored


def test_mid_run_failure_reports_what_finished(lg_fake, capsys):
    addr, fake = lg_fake
    fake.fail_after = 3
    rc = main(["--target", addr, *QUICK, "--duration", "3", "--max-consecutive-failures", "3"])
    captured = capsys.readouterr()
    assert rc == 1
    assert "STOPPED EARLY" in captured.out and "failures: UNAVAILABLE x" in captured.out
    assert " 3 finished" in captured.out
    assert "Traceback" not in captured.err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--workload", "mooncake", "--trace", "/nonexistent/t.jsonl"], "no such trace file"),
        (["--workload", "fairness", "--duration", "0"], "duration_s must be > 0"),
        (["--workload", "fairness", "--max-prompt-tokens", "4096"], "max_prompt_tokens"),
        (["--workload", "fairness", "--ttft-slo", "-1"], "--ttft-slo must be > 0"),
        (["--workload", "fairness", "--tenants", "2", "--tenant-rates", "1"], "tenant_rates"),
        (["--workload", "multiturn", "--turns", "geom:0"], "distribution"),
        (["--workload", "fairness", "--concurrency", "0"], "concurrency"),
        (["--workload", "fairness", "--rate", "0.001", "--duration", "0.01"], "workload is empty"),
    ],
)
def test_bad_input_exits_2_with_a_message(capsys, args, message):
    assert main(["--target", "127.0.0.1:1", *args]) == 2
    err = capsys.readouterr().err
    assert message in err and err.startswith("fastswitch-bench: error:")
    assert "Traceback" not in err


def test_malformed_trace_file(tmp_path, capsys):
    bad = tmp_path / "t.csv"
    bad.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46.68,1")
    assert main(["--workload", "azure-conv", "--trace", str(bad)]) == 2
    assert f"{bad}:2: expected 3 fields" in capsys.readouterr().err


def test_unreachable_target_exits_3(capsys):
    rc = main(["--target", f"127.0.0.1:{free_port()}", "--workload", "fairness"])
    err = capsys.readouterr().err
    assert rc == 3 and "no FastSwitch scheduler answers" in err and "Traceback" not in err


def test_unknown_flag_is_argparse_usage_error(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--workload", "fairness", "--bogus"])
    assert exc.value.code == 2
    assert "unrecognized arguments: --bogus" in capsys.readouterr().err


def test_compare_rejects_bad_modes_before_starting_anything(capsys):
    assert main(["compare", "--modes", "fastswitch,warp", "--workload", "fairness"]) == 2
    assert "--modes must list distinct modes" in capsys.readouterr().err
    assert main(["compare", "--modes", "fastswitch,fastswitch", "--workload", "fairness"]) == 2


def test_progress_line(capsys):
    live = Live(12.0, 20.0, 150, 300, 140, 1, 12, 0.085, 0.014)
    line = render(live, width=10)
    assert line.startswith("[######....]  12.0/20s")
    assert "done 140  in flight 12  failed 1  TTFT 85ms  TBT 14ms" in line
    assert "draining" in render(Live(25.0, 20.0, 300, 300, 290, 0, 10, None, None))
    import sys

    bar = ProgressBar(sys.stderr)
    bar.update(live)
    bar.close()
    assert capsys.readouterr().err.startswith("\r[")


MULTITURN = ["--workload", "multiturn", "--duration", "0.3", "--rate", "10", "--turns", "2"]
MULTITURN += ["--prompt-len", "4", "--output-len", "2", "--think-time", "0", "--no-progress"]
MULTITURN += ["--warmup", "0", "--max-requests", "4"]


def test_multiturn_uses_chat_by_default(lg_fake, tmp_path):
    addr, fake = lg_fake
    fake.chat_served = True
    out = tmp_path / "r.json"
    assert main(["--target", addr, *MULTITURN, "--json", str(out)]) == 0
    assert fake.chats and not fake.requests
    assert any(c.conversation_id for c in fake.chats)  # later turns continue a conversation
    doc = json.loads(out.read_text())
    assert doc["params"]["run"]["use_chat"] is True
    assert doc["params"]["resolved"]["tenants"] == 4
    assert {r["tenant"] for r in doc["requests"]} <= {f"tenant-{i}" for i in range(4)}
    fake.chats.clear()
    assert main(["--target", addr, *MULTITURN, "--use-chat"]) == 0 and fake.chats


@pytest.mark.parametrize("flag", ["--no-chat", "--use-generate"])
def test_multiturn_without_chat_sends_the_history_with_generate(lg_fake, flag):
    addr, fake = lg_fake
    assert main(["--target", addr, *MULTITURN, flag]) == 0
    assert fake.requests and not fake.chats


def test_the_context_comes_from_the_server_unless_given(lg_fake, tmp_path):
    addr, fake = lg_fake
    out = tmp_path / "r.json"

    def resolved(*extra: str) -> dict:
        assert main(["--target", addr, *QUICK, "--json", str(out), *extra]) == 0
        return json.loads(out.read_text())["params"]["resolved"]

    fake.max_model_len = 512
    got = resolved()
    assert (got["max_model_len"], got["max_model_len_from"]) == (512, "server")
    assert got["max_prompt_tokens"] == 384  # 3/4 of the server's context
    got = resolved("--max-model-len", "4096")
    assert (got["max_model_len"], got["max_model_len_from"]) == (4096, "--max-model-len")
    fake.max_model_len = 0  # an older server does not say
    got = resolved()
    assert (got["max_model_len"], got["max_model_len_from"]) == (2048, "default")


def test_kv_reuse_line_names_what_each_number_counts(lg_fake, capsys):
    addr, fake = lg_fake
    fake.swap_bytes_avoided = 1 << 20  # per finished request
    assert main(["--target", addr, *QUICK]) == 0
    text = capsys.readouterr().out
    [line] = [ln for ln in text.splitlines() if "KV reuse:" in ln]
    assert "no prompt tokens taken from retained KV" in line
    assert "of swap-out not copied (blocks the host already held" in line
    assert "reused KV tokens (" not in text


def test_warnings_are_printed_once_and_noted(lg_fake, capsys, tmp_path):
    addr, fake = lg_fake
    fake.token_delay_s = 0.02
    out = tmp_path / "r.json"
    args = ["--target", addr, *QUICK, "--duration", "0.5", "--concurrency", "1"]
    assert main([*args, "--json", str(out)]) == 0
    captured = capsys.readouterr()
    assert captured.err.count("fastswitch-bench: warning:") == 1
    assert "for a concurrency slot" in captured.err
    assert "note: WARNING:" in captured.out and "waited in the client" in captured.out
    doc = json.loads(out.read_text())
    assert any("waited in the client" in n for n in doc["run"]["notes"])
    assert doc["summary"]["client_queued"] >= 1 and doc["summary"]["max_client_queue_s"] > 0.05
