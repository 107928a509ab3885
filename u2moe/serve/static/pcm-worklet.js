// Microphone samples -> 16 kHz 16-bit PCM in 100 ms messages to the page.
// `sampleRate` is the AudioContext's rate; linear interpolation resamples it to 16 kHz.
const TARGET_RATE = 16000;
const SAMPLES_PER_MESSAGE = 1600;

class PcmWriter extends AudioWorkletProcessor {
  constructor() {
    super();
    this.step = sampleRate / TARGET_RATE;  // input samples per output sample
    this.position = 0;  // of the next output sample, in input samples from `previous`
    this.previous = 0;  // the last input sample of the previous block
    this.out = new Int16Array(SAMPLES_PER_MESSAGE);
    this.filled = 0;
    this.port.onmessage = (event) => {
      if (event.data !== "flush") return;
      this.flush();
      this.port.postMessage("flushed");
    };
  }

  process(inputs) {
    const input = inputs[0][0];
    if (!input) return true;
    // sample i of [previous, ...input] is at i; output samples at position, position + step, ...
    while (this.position <= input.length) {
      const i = Math.floor(this.position);
      const frac = this.position - i;
      const a = i === 0 ? this.previous : input[i - 1];
      const b = i === input.length ? a : input[i];
      this.push(a + (b - a) * frac);
      this.position += this.step;
    }
    this.position -= input.length;
    this.previous = input[input.length - 1];
    return true;
  }

  push(x) {
    const clipped = Math.max(-1, Math.min(32767 / 32768, x));
    this.out[this.filled++] = Math.round(clipped * 32768);
    if (this.filled === SAMPLES_PER_MESSAGE) this.flush();
  }

  flush() {
    if (this.filled > 0) this.port.postMessage(this.out.slice(0, this.filled).buffer);
    this.filled = 0;
  }
}

registerProcessor("pcm-writer", PcmWriter);
