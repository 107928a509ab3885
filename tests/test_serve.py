"""`u2moe serve`: WeNet's protocol, HTTP routes, limits, faults and batching, on loopback."""

import asyncio
import contextlib
import io
import json
import shutil
import signal
import ssl
import subprocess
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from serve_support import (  # noqa: I001 (tests/ helper)
    CHUNK,
    ENDPOINT,
    RunningServer,
    finals,
    make_model_dir,
    receive_all,
    serve_process,
    speech,
    stream,
    transcribers,
    write_wav,
)
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from u2moe.cli import main
from u2moe.commands.serve import tls_context
from u2moe.serve.server import Limits


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return make_model_dir(tmp_path_factory.mktemp("serve"))


@pytest.fixture(scope="module")
def server(model_dir):
    running = RunningServer(model_dir)
    yield running
    running.stop()


@pytest.fixture(scope="module")
def alone(model_dir):
    """Results of `u2moe transcribe` with the server's chunk settings: the reference."""
    streaming, _ = transcribers(model_dir)
    return lambda samples: streaming.transcribe(samples, timestamps=True)


def test_partials_per_chunk_then_final_equal_to_transcribe(server, alone):
    samples = speech(2.3)
    messages = stream(server.url, samples, piece_samples=1000)

    assert messages[0] == {"status": "ok", "type": "server_ready"}
    assert messages[-1] == {"status": "ok", "type": "speech_end"}
    kinds = [m["type"] for m in messages[1:-1]]
    frames = (len(samples) - 400) // 160 + 1  # fbank frames: 25 ms windows every 10 ms
    window = (CHUNK - 1) * 4 + 7
    assert kinds == ["partial_result"] * ((frames - window) // (4 * CHUNK) + 1) + ["final_result"]
    for m in messages[1:-2]:  # partials: a JSON string of [{"sentence"}], no word pieces
        assert isinstance(m["nbest"], str) and list(json.loads(m["nbest"])[0]) == ["sentence"]
    (final,) = finals(messages)
    expected = alone(samples)
    assert final["sentence"] == expected.text
    assert [p["word"] for p in final["word_pieces"]] == [w.text for w in expected.words]
    for piece, word in zip(final["word_pieces"], expected.words, strict=True):
        assert isinstance(piece["start"], int) and isinstance(piece["end"], int)
        assert abs(piece["start"] - word.start * 1000) <= 80  # ms; streaming vs whole times
    assert server.health()["streams"] == 0


@pytest.mark.parametrize(
    "message, error",
    [
        (b"\x00\x01", "Start signal is expected before binary data"),
        ("not json", "Wrong protocol"),
        ("[1, 2]", "Wrong protocol"),
        ('{"nbest": 1}', "Wrong message header"),
        ('{"signal": "pause"}', "Unexpected signal type"),
        ('{"signal": "start", "nbest": "2"}', "integer is expected for nbest option"),
        ('{"signal": "start", "continuous_decoding": 1}', "boolean true or false is expected"),
        ('{"signal": "end"}', "Start signal is expected before end signal"),
    ],
)
def test_malformed_input_gets_failed_status_and_close(server, alone, message, error):
    with connect(server.url) as bad, connect(server.url) as good:
        good.send(json.dumps({"signal": "start"}))
        assert json.loads(good.recv(timeout=30))["type"] == "server_ready"
        bad.send(message)
        (reply,) = receive_all(bad)
        assert reply["status"] == "failed" and reply["message"].startswith(error)
        samples = speech(1.2, seed=1)
        good.send(samples.tobytes())
        good.send(json.dumps({"signal": "end"}))
        assert finals(receive_all(good))[0]["sentence"] == alone(samples).text


def test_a_second_start_fails_the_stream(server):
    with connect(server.url) as ws:
        ws.send(json.dumps({"signal": "start"}))
        ws.send(json.dumps({"signal": "start"}))
        messages = receive_all(ws)
    assert messages[0]["type"] == "server_ready"
    assert messages[1] == {"status": "failed", "message": messages[1]["message"]}
    assert "start signal" in messages[1]["message"]


def test_continuous_decoding_gives_one_final_per_endpoint(model_dir):
    # speech, silence, speech, silence: two endpoints; each final restarts the search
    samples = np.concatenate([speech(1.6), np.zeros(16000, np.int16)] * 2)
    streaming, _ = transcribers(model_dir, endpoint=ENDPOINT)
    recognizer = streaming.recognizer(timestamps=True)
    expected = [r for r in recognizer.accept_waveform(samples) if r.final]
    expected.append(recognizer.finish())
    assert len(expected) >= 3  # two endpoints and the end of input
    running = RunningServer(model_dir, endpoint=ENDPOINT)
    try:
        messages = stream(running.url, samples, start={"continuous_decoding": True})
        got = finals(messages)
        assert [f["sentence"] for f in got] == [r.text for r in expected]
        assert got[1]["word_pieces"][0]["start"] >= 1600  # stream time, in ms
        assert [m["type"] for m in messages].count("speech_end") == 1

        messages = stream(running.url, samples, start={"continuous_decoding": False})
        assert [f["sentence"] for f in finals(messages)] == [expected[0].text]
        assert messages[-1]["type"] == "speech_end"
    finally:
        running.stop()


def test_http_page_health_and_offline_transcribe(server, model_dir, tmp_path):
    status, page = server.get("/")
    assert status == 200 and b"Start microphone" in page
    for name in ("app.js", "pcm-worklet.js", "style.css"):
        assert server.get(f"/static/{name}")[0] == 200
    assert server.get("/nope")[0] == 404
    assert server.get("/static/../server.py")[0] == 404
    health = server.health()
    assert health["model"] == str(model_dir) and health["streams"] == 0

    samples = speech(1.7, seed=2)
    wav = write_wav(tmp_path / "a.wav", samples).read_bytes()
    status, body = server.get("/transcribe?timestamps=1&name=a.wav", wav)
    _, offline = transcribers(model_dir)
    expected = offline.transcribe(tmp_path / "a.wav", timestamps=True).as_dict()
    expected = {"file": "a.wav", **expected}  # as `u2moe transcribe --json` prints it
    assert status == 200 and json.loads(body) == expected
    status, body = server.get("/transcribe", b"RIFF not really a wav file")
    assert status == 400 and "upload" in json.loads(body)["error"]
    assert server.get("/transcribe", b"")[0] == 400


def test_limits_streams_idle_utterance_and_message_size(model_dir):
    limits = Limits(max_streams=2, idle_timeout_s=2.0, max_utterance_s=1.0, max_message_bytes=8192)
    running = RunningServer(model_dir, limits)
    try:
        with connect(running.url) as a, connect(running.url) as b:
            for ws in (a, b):
                ws.send(json.dumps({"signal": "start"}))
                assert json.loads(ws.recv(timeout=30))["type"] == "server_ready"
            with connect(running.url) as c:  # one too many: refused at once, not a hang
                (reply,) = receive_all(c)
                assert reply["status"] == "failed" and "--max-streams 2" in reply["message"]
                assert c.close_code == 1013
            with contextlib.suppress(ConnectionClosed):  # b sends 2 s without an endpoint
                for i in range(0, 2 * 32000, 8000):
                    b.send(speech(2.0).tobytes()[i : i + 8000])
            assert "--max-utterance-s" in receive_all(b)[-1]["message"]
            assert "idle timeout" in receive_all(a)[-1]["message"]
        with connect(running.url) as d:
            d.send(json.dumps({"signal": "start"}))
            d.recv(timeout=30)
            d.send(b"\x00" * 8194)
            with pytest.raises(ConnectionClosed):
                d.recv(timeout=30)
            assert d.close_code == 1009  # message too big
        assert running.health()["streams"] == 0
    finally:
        running.stop()


def fuzz_connection(url: str, rng: np.random.Generator) -> None:
    """One connection doing something random and often wrong; the server may close it."""
    with connect(url, open_timeout=30, max_size=None) as ws:
        with contextlib.suppress(ConnectionClosed, TimeoutError):
            if rng.random() < 0.8:
                ws.send(
                    json.dumps({"signal": "start", "continuous_decoding": bool(rng.random() < 0.5)})
                )
            for _ in range(int(rng.integers(1, 6))):
                kind = rng.integers(0, 6)
                if kind == 0:  # odd-length PCM, random samples
                    ws.send(
                        rng.integers(0, 256, int(rng.integers(1, 4000)) * 2 + 1, np.uint8).tobytes()
                    )
                elif kind == 1:  # text where binary is expected
                    ws.send(rng.choice(["hello", "{", '{"signal": 3}', "null", '"start"']))
                elif kind == 2:  # oversized
                    ws.send(b"\x01" * 70000)
                elif kind == 3:  # a truncated frame, then the socket goes away
                    ws.socket.sendall(bytes([0x82, 0x7E, 0x10, 0x00]) + b"\x00" * 100)
                    ws.socket.close()
                    return
                elif kind == 4:  # abrupt disconnect mid-utterance
                    ws.send(speech(0.5, seed=3).tobytes())
                    ws.socket.close()
                    return
                else:
                    ws.send(json.dumps({"signal": "end"}))
            ws.recv(timeout=0.2)


def test_fuzz_no_crash_no_leak_others_unchanged(model_dir, alone):
    limits = Limits(max_message_bytes=65536, idle_timeout_s=5.0)
    running = RunningServer(model_dir, limits)
    samples = speech(2.0, seed=4)
    expected = alone(samples).text
    try:
        for round_ in range(12):
            with ThreadPoolExecutor(3) as pool:
                good = pool.submit(stream, running.url, samples, 800)
                bad = [
                    pool.submit(fuzz_connection, running.url, np.random.default_rng([round_, i]))
                    for i in range(2)
                ]
                assert finals(good.result())[0]["sentence"] == expected
                for future in bad:
                    future.result()  # the fuzzing client itself ran through
        deadline = time.monotonic() + 10
        while running.health()["streams"] and time.monotonic() < deadline:
            time.sleep(0.1)
        assert running.health()["streams"] == 0
    finally:
        running.stop()


def test_sigterm_finishes_open_streams_with_finals_and_exits_0(model_dir, alone):
    options = ["--model", str(model_dir), "--chunk-size", str(CHUNK), "--left-chunks", "-1"]
    server, url = serve_process(*options)
    try:
        samples = speech(1.5, seed=5)
        with connect(url) as ws:
            ws.send(json.dumps({"signal": "start"}))
            ws.send(samples.tobytes())
            assert json.loads(ws.recv(timeout=30))["type"] == "server_ready"
            assert json.loads(ws.recv(timeout=30))["type"] == "partial_result"
            server.send_signal(signal.SIGTERM)
            messages = receive_all(ws)
        assert messages[-1]["type"] == "speech_end"
        assert finals(messages)[0]["sentence"] == alone(samples).text
        assert server.wait(30) == 0
    finally:
        server.kill()


def test_concurrent_streams_are_batched_and_equal_each_alone(model_dir):
    # 8 streams of different lengths, started at different times, with endpoints inside:
    # each gets exactly the messages it gets alone
    audio = [
        np.concatenate([speech(0.6 + 0.25 * i, seed=i), np.zeros(8000 * (i % 3), np.int16)] * 2)
        for i in range(8)
    ]
    start = {"continuous_decoding": True}
    running = RunningServer(model_dir, max_batch=8, endpoint=ENDPOINT)
    try:
        alone = [stream(running.url, samples, 1600, start) for samples in audio]
        before = running.health()
        # the worker busy for a moment: the streams' first messages meet in one round
        busy = running.server.engine.call(time.sleep, 1.0)
        asyncio.run_coroutine_threadsafe(busy, running.loop)
        with ThreadPoolExecutor(8) as pool:
            delayed = [
                pool.submit(
                    lambda i: time.sleep(0.05 * i) or stream(running.url, audio[i], 1600, start), i
                )
                for i in range(8)
            ]
            together = [future.result() for future in delayed]
        after = running.health()
    finally:
        running.stop()
    assert together == alone
    assert sum(len(finals(m)) for m in alone) > 8  # endpoints fired inside some streams
    steps = after["batches"] - before["batches"]
    chunks = after["batched_chunks"] - before["batched_chunks"]
    assert chunks > steps  # streams shared encoder calls


def test_client_prints_partials_and_the_final(server, alone, tmp_path, capsys):
    samples = speech(1.4, seed=6)
    wav = write_wav(tmp_path / "a.wav", samples)
    assert main(["client", server.url, str(wav), "--chunk-ms", "50"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("partial\t") and all(x.startswith("partial\t") for x in lines[:-1])
    kind, span, text = lines[-1].split("\t")
    assert kind == "final" and text == alone(samples).text
    assert main(["client", "ws://127.0.0.1:1", str(wav)]) == 2
    assert "cannot connect to ws://127.0.0.1:1" in capsys.readouterr().err


def test_serve_refuses_bad_options_in_one_line(model_dir, capsys):
    assert main(["serve", "--model", str(model_dir), "--keyfile", "key.pem"]) == 2
    assert main(["serve", "--model", str(model_dir), "--max-batch", "0"]) == 2
    assert main(["serve", "--model", str(model_dir), "--host", "192.0.2.1", "--port", "0"]) == 2
    errors = capsys.readouterr().err.splitlines()
    assert errors == [
        "u2moe serve: error: --keyfile needs --certfile",
        "u2moe serve: error: --max-batch must be at least 1",
        errors[2],
    ]
    assert errors[2].startswith("u2moe serve: error: cannot listen on 192.0.2.1:0")


def test_top_k_serves_what_the_api_gives_with_that_k(model_dir, tmp_path, capsys):
    moe_dir = make_model_dir(tmp_path, ffn={"type": "moe", "n_experts": 8, "top_k": 2})
    wav = write_wav(tmp_path / "a.wav", speech(1.5, seed=3))
    by_k = {}
    for k in (1, 2):
        streaming, offline = transcribers(moe_dir, top_k=k)
        full = offline.transcribe(wav, timestamps=True).as_dict()
        by_k[k] = streaming.transcribe(wav).text, {"file": "a.wav", **full}
    assert by_k[1][1] != by_k[2][1]  # one expert per frame changes the scores
    server, url = serve_process("--model", str(moe_dir), "--chunk-size", str(CHUNK),
                                "--left-chunks", "-1", "--top-k", "1")  # fmt: skip
    try:
        assert finals(stream(url, speech(1.5, seed=3)))[0]["sentence"] == by_k[1][0]
        http_url = url.replace("ws://", "http://") + "/transcribe?timestamps=1&name=a.wav"
        request = urllib.request.Request(http_url, data=wav.read_bytes(), method="POST")
        with urllib.request.urlopen(request, timeout=30) as response:
            assert json.load(response) == by_k[1][1]
    finally:
        server.kill()
    assert main(["serve", "--model", str(model_dir), "--top-k", "1"]) == 2
    assert main(["serve", "--model", str(moe_dir), "--top-k", "9"]) == 2
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 2 and "no MoE layer" in errors[0] and "9" in errors[1], errors


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl for a certificate")
def test_tls_serves_the_page_and_streams_over_wss(model_dir, alone, tmp_path):
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj",
         "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key),
         "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    running = RunningServer(model_dir, tls=tls_context(str(cert), str(key)))
    trust = ssl.create_default_context(cafile=str(cert))
    try:
        with urllib.request.urlopen(running.https_url + "/", context=trust, timeout=30) as page:
            assert b"Start microphone" in page.read()
        samples = speech(1.0, seed=7)
        with connect(running.wss_url, ssl=trust) as ws:
            ws.send(json.dumps({"signal": "start"}))
            ws.send(samples.tobytes())
            ws.send(json.dumps({"signal": "end"}))
            assert finals(receive_all(ws))[0]["sentence"] == alone(samples).text
    finally:
        running.stop()


def test_a_long_utterance_gets_its_final_with_word_times(server):
    messages = stream(server.url, speech(12.0, seed=8))  # 126 tokens
    assert [m.get("type") for m in messages][-2:] == ["final_result", "speech_end"]
    assert len(finals(messages)[0]["sentence"]) > 100 and finals(messages)[0]["word_pieces"]


def test_onnx_export_served_like_the_runtime_transcribes(model_dir, tmp_path):
    from u2moe.export import export_model
    from u2moe.runtime import load_model

    with contextlib.redirect_stdout(io.StringIO()):
        export_model(model_dir, tmp_path / "onnx", CHUNK, 2)
    assert main(["serve", "--onnx", str(tmp_path / "onnx"), "--top-k", "1"]) == 2
    runtime = load_model(tmp_path / "onnx")
    server, url = serve_process("--onnx", str(tmp_path / "onnx"))
    try:
        audio = [speech(1.3, seed=9), speech(0.9, seed=10)]
        with ThreadPoolExecutor(2) as pool:
            got = list(pool.map(lambda samples: stream(url, samples), audio))
        for samples, messages in zip(audio, got, strict=True):
            assert finals(messages)[0]["sentence"] == runtime.transcribe(samples).text
        http_url = url.replace("ws://", "http://")
        with urllib.request.urlopen(http_url + "/healthz", timeout=30) as response:
            assert json.load(response)["model"] == str(tmp_path / "onnx")
        server.send_signal(signal.SIGTERM)
        assert server.wait(30) == 0
    finally:
        server.kill()


def test_a_final_carries_the_rescored_nbest_the_start_asked_for(server):
    messages = stream(server.url, speech(1.3, seed=3), start={"nbest": 3})
    (final,) = [json.loads(m["nbest"]) for m in messages if m.get("type") == "final_result"]
    assert 1 < len(final) <= 3 and "word_pieces" in final[0]
    assert len({path["sentence"] for path in final}) == len(final)  # distinct hypotheses
    single = stream(server.url, speech(1.3, seed=3))
    assert finals(single)[0] == final[0]


def test_hotwords_in_the_start_message(server):
    plain = stream(server.url, speech(1.3, seed=3), start={"nbest": 2})
    best = finals(plain)[0]["sentence"]
    phrase = best.split()[0] if best.split() else ""
    hot = stream(server.url, speech(1.3, seed=3), start={"context": [phrase], "nbest": 2})
    assert finals(hot)[0]["sentence"]  # the stream decodes with its own context graph
    for bad, message in [
        ({"context": "abc"}, "a list of strings is expected for context option"),
        ({"context": ["abc"], "context_score": "x"}, "a number is expected"),
        ({"context": ["\u00e9\u00e9\u00e9"]}, "has units the model does not know"),
    ]:
        messages = stream(server.url, speech(0.5, seed=1), start=bad)
        assert messages[0]["status"] == "failed" and message in messages[0]["message"], messages
