// The page's side of WeNet's websocket protocol: a stream per microphone session or file.
"use strict";

const RATE = 16000;
const CHUNK_SAMPLES = 1600;  // 100 ms per message when streaming a file
const FILE_PACE = 4;  // a file streams at 4x real time, so that its partials can be seen

const $ = (id) => document.getElementById(id);
const micButton = $("mic");
let stream = null;  // the open Stream, if any
let mic = null;  // {context, source, node, media} while the microphone runs

function setStatus(text) { $("status").textContent = text; }

function showError(text) {
  $("error").textContent = text;
  $("error").hidden = false;
  setStatus("error");
}

function seconds(ms) { return (ms / 1000).toFixed(2); }

function addFinal(path) {
  if (!path || !path.sentence) return;  // an endpoint in silence: nothing said
  const pieces = path.word_pieces || [];
  const item = document.createElement("li");
  const time = document.createElement("span");
  time.className = "time";
  time.textContent = pieces.length
    ? `${seconds(pieces[0].start)}-${seconds(pieces[pieces.length - 1].end)}`
    : "";
  const text = document.createElement("span");
  text.className = "text";
  text.textContent = path.sentence;
  item.append(time, text);
  $("finals").append(item);
}

// One websocket stream: start signal, audio, end signal; results shown as they come.
class Stream {
  constructor(onEnd) {
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    this.socket = new WebSocket(`${scheme}//${location.host}/`);
    this.socket.binaryType = "arraybuffer";
    this.ended = false;
    this.onEnd = onEnd;
    this.ready = new Promise((resolve, reject) => {
      this.socket.onopen = () => this.socket.send(JSON.stringify({
        signal: "start", nbest: 1, continuous_decoding: $("continuous").checked,
      }));
      this.socket.onmessage = (event) => this.receive(JSON.parse(event.data), resolve, reject);
      this.socket.onerror = () => reject(new Error("cannot connect to the server"));
      this.socket.onclose = (event) => this.closed(event, reject);
    });
  }

  receive(message, resolve, reject) {
    if (message.status === "failed") {
      showError(`server: ${message.message}`);
      this.ended = true;
      reject(new Error(message.message));
      this.finish();
    } else if (message.type === "server_ready") {
      setStatus("streaming");
      resolve();
    } else if (message.type === "partial_result") {
      const paths = JSON.parse(message.nbest);
      $("partial").textContent = paths.length ? paths[0].sentence : "";
    } else if (message.type === "final_result") {
      $("partial").textContent = "";
      addFinal(JSON.parse(message.nbest)[0]);
    } else if (message.type === "speech_end") {
      this.ended = true;
      setStatus("done");
      this.finish();
    }
  }

  closed(event, reject) {
    if (!this.ended) {
      const why = event.reason ? `: ${event.reason}` : "";
      showError(`the server closed the connection (code ${event.code}${why})`);
      reject(new Error("closed"));
    }
    this.finish();
  }

  send(pcm) { if (this.socket.readyState === WebSocket.OPEN) this.socket.send(pcm); }

  end() { this.send(JSON.stringify({ signal: "end" })); }

  finish() {
    if (this.onEnd) this.onEnd();
    this.onEnd = null;
    if (stream === this) stream = null;
  }
}

function newStream(onEnd) {
  if (stream) stream.finish();
  $("error").hidden = true;
  $("partial").textContent = "";
  setStatus("connecting");
  stream = new Stream(onEnd);
  return stream;
}

async function startMic() {
  micButton.disabled = true;
  const current = newStream(stopMic);
  try {
    const media = await navigator.mediaDevices.getUserMedia({
      audio: { channelCount: 1, echoCancellation: false, noiseSuppression: false },
    });
    let context;
    try {  // the browser resamples to 16 kHz where it can; the worklet resamples otherwise
      context = new AudioContext({ sampleRate: RATE });
      mic = { context, media, source: context.createMediaStreamSource(media) };
    } catch (e) {
      if (context) context.close();
      context = new AudioContext();
      mic = { context, media, source: context.createMediaStreamSource(media) };
    }
    await context.audioWorklet.addModule("/static/pcm-worklet.js");
    mic.node = new AudioWorkletNode(context, "pcm-writer");
    await current.ready;
    mic.node.port.onmessage = (event) => {
      if (event.data === "flushed") current.end();
      else current.send(event.data);
    };
    mic.source.connect(mic.node).connect(context.destination);  // the node outputs silence
    micButton.textContent = "Stop";
    micButton.classList.add("recording");
  } catch (e) {
    if (!current.ended) showError(`microphone: ${e.message}`);
    stopMic();
  } finally {
    micButton.disabled = false;
  }
}

function stopMic() {
  if (!mic) return;
  const { context, media, source, node } = mic;
  mic = null;
  media.getTracks().forEach((track) => track.stop());
  if (node) {
    source.disconnect();
    node.port.postMessage("flush");  // the last samples, then "flushed" sends the end signal
    setTimeout(() => context.close(), 1000);
  } else {
    context.close();
  }
  micButton.textContent = "Start microphone";
  micButton.classList.remove("recording");
  if (stream && !stream.ended) setStatus("finishing");
}

micButton.onclick = () => (mic ? stopMic() : startMic());

// A file: decoded and resampled to 16 kHz mono by the browser, then streamed like speech.
async function streamFile(file) {
  const data = await file.arrayBuffer();
  const probe = new OfflineAudioContext(1, 1, RATE);
  const decoded = await probe.decodeAudioData(data);
  const length = Math.ceil(decoded.duration * RATE);
  const context = new OfflineAudioContext(1, length, RATE);
  const source = context.createBufferSource();
  source.buffer = decoded;
  source.connect(context.destination);
  source.start();
  const samples = (await context.startRendering()).getChannelData(0);
  const current = newStream();
  await current.ready;
  for (let i = 0; i < samples.length && !current.ended; i += CHUNK_SAMPLES) {
    const piece = samples.subarray(i, i + CHUNK_SAMPLES);
    const pcm = new Int16Array(piece.length);
    for (let j = 0; j < piece.length; j++) {
      pcm[j] = Math.round(Math.max(-1, Math.min(32767 / 32768, piece[j])) * 32768);
    }
    current.send(pcm.buffer);
    await new Promise((resolve) => setTimeout(resolve, 100 / FILE_PACE));
  }
  current.end();
}

$("file").onchange = (event) => {
  const file = event.target.files[0];
  if (file) streamFile(file).catch((e) => showError(`${file.name}: ${e.message}`));
  event.target.value = "";
};
