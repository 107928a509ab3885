"""The web page in a real browser: Debian's chromium, headless, driven over the DevTools
protocol, with a fake microphone that plays a WAV file. The page must show the final text
that `u2moe transcribe` gives (same chunk settings) for the audio it streamed."""

import base64
import contextlib
import json
import os
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from serve_support import RunningServer, make_model_dir, speech, transcribers, write_wav
from websockets.sync.client import connect

from u2moe.decode.scoring import char_errors

CHROMIUM = shutil.which("chromium")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (make setup)")
# docs/serve.png: U2MOE_SCREENSHOT=docs/serve.png pytest tests/test_serve_browser.py
SCREENSHOT = os.environ.get("U2MOE_SCREENSHOT")


class Browser:
    """A headless chromium showing `url`, and a DevTools session on its page."""

    def __init__(self, url: str, profile: Path, fake_audio: Path):
        self.process = subprocess.Popen(
            [
                CHROMIUM,
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--remote-debugging-port=0",
                f"--user-data-dir={profile}",
                "--autoplay-policy=no-user-gesture-required",
                "--use-fake-ui-for-media-stream",
                "--use-fake-device-for-media-stream",
                f"--use-file-for-fake-audio-capture={fake_audio}%noloop",
                "--window-size=900,700",
                url,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:  # chromium must not outlive a failed start
            port_file = profile / "DevToolsActivePort"
            deadline = time.monotonic() + 30
            while not (port_file.exists() and port_file.read_text().count("\n") >= 1):
                assert time.monotonic() < deadline, "chromium did not start"
                time.sleep(0.1)
            port = int(port_file.read_text().split()[0])
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as r:
                page = next(t for t in json.load(r) if t["type"] == "page")
            self.connection = contextlib.ExitStack()
            self.devtools = self.connection.enter_context(
                connect(page["webSocketDebuggerUrl"], max_size=None)
            )
        except BaseException:
            self.process.kill()
            raise
        self.next_id = 0

    def call(self, method: str, **params) -> dict:
        self.next_id += 1
        self.devtools.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:  # events come in between; wait for our answer
            reply = json.loads(self.devtools.recv(timeout=30))
            if reply.get("id") == self.next_id:
                assert "error" not in reply, reply
                return reply["result"]

    def evaluate(self, expression: str):
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 60):
        deadline = time.monotonic() + timeout
        while not (value := self.evaluate(expression)):
            assert time.monotonic() < deadline, f"timed out waiting for {expression}"
            time.sleep(0.1)
        return value

    def close(self):
        self.connection.close()
        self.process.terminate()
        self.process.wait(10)


FINALS = "[...document.querySelectorAll('#finals .text')].map(e => e.textContent)"
STATUS = "document.getElementById('status').textContent"


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("browser")
    model_dir = make_model_dir(root)
    samples = np.concatenate([np.zeros(3200, np.int16), speech(2.3), np.zeros(8000, np.int16)])
    wav = write_wav(root / "speech.wav", samples)
    server = RunningServer(model_dir)
    browser = Browser(server.http_url + "/", root / "profile", wav)
    try:
        browser.wait_for(
            "document.readyState === 'complete' && document.getElementById('file') !== null"
        )
        streaming, _ = transcribers(model_dir)
        yield browser, server, wav, streaming.transcribe(wav).text
    finally:
        browser.close()
        server.stop()


def test_a_file_streamed_from_the_page_shows_the_transcribe_result(setup):
    browser, server, wav, expected = setup
    picker = browser.call("Runtime.evaluate", expression="document.getElementById('file')")
    browser.call("DOM.setFileInputFiles", files=[str(wav)], objectId=picker["result"]["objectId"])
    browser.wait_for(f"{STATUS} === 'done'")
    assert browser.evaluate(FINALS) == [expected]
    assert browser.evaluate("document.getElementById('error').hidden")
    assert server.health()["streams"] == 0


def test_the_microphone_streams_live_and_the_final_shows(setup):
    """The fake microphone plays the file once (then silence), resampled by chromium and
    started at a moment of its own: the random test model's text is not robust to that
    shift, so the final is held to the file's transcript within a character error rate
    (audio at a wrong rate or out of order gives another text altogether)."""
    browser, server, wav, expected = setup
    browser.evaluate("document.getElementById('finals').replaceChildren()")
    browser.evaluate("document.getElementById('mic').click()")
    browser.wait_for(f"{STATUS} === 'streaming'")
    first_partial = browser.wait_for("document.getElementById('partial').textContent")
    time.sleep(3.0)  # the file plays at real time
    assert browser.evaluate("document.getElementById('partial').textContent") != first_partial
    browser.evaluate("document.getElementById('mic').click()")
    browser.wait_for(f"{STATUS} === 'done'")
    (final,) = browser.evaluate(FINALS)
    assert char_errors(expected, final).rate < 0.4, (final, expected)
    times = browser.evaluate("document.querySelector('#finals .time').textContent")
    start, end = (float(t) for t in times.split("-"))
    assert 0 <= start < end <= 4.0
    assert browser.evaluate("document.getElementById('error').hidden")
    shot = base64.b64decode(browser.call("Page.captureScreenshot", format="png")["data"])
    assert shot.startswith(b"\x89PNG")
    if SCREENSHOT:
        Path(SCREENSHOT).write_bytes(shot)


def test_a_refused_stream_shows_an_error(setup):
    browser, server, wav, expected = setup
    server.server.limits.max_streams = 0
    try:
        browser.evaluate("document.getElementById('mic').click()")
        message = browser.wait_for(
            "!document.getElementById('error').hidden && "
            "document.getElementById('error').textContent"
        )
    finally:
        server.server.limits.max_streams = 64
    assert "server busy" in message and "--max-streams 0" in message
