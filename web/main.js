// The page: loads the default model into the WebAssembly runtime and streams generated text.
// URL parameters (used by the end-to-end test, handy by hand): prompt, max, temperature,
// greedy=1, seed, weights=f16|f32, model=<directory URL>, autorun=1, report=<URL to POST the
// result to as JSON; the session is then also saved, resumed and stepped once more>.
import init, { Model } from "./pkg/retnet_web.js";

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
const modelDir = params.get("model") ?? "../models/retnet-shakespeare/";

for (const [key, id] of [["prompt", "prompt"], ["max", "max"], ["temperature", "temperature"], ["seed", "seed"], ["weights", "weights"]]) {
  if (params.has(key)) $(id).value = params.get(key);
}
if (params.get("greedy") === "1") $("greedy").checked = true;

let model = null;
let weights = null;
let stopRequested = false;

function status(text, isError = false) {
  $("status").textContent = text;
  $("status").className = isError ? "error" : "";
}

async function fetchOk(url) {
  const response = await fetch(url);
  if (!response.ok) throw new Error(`${url}: HTTP ${response.status}`);
  return response;
}

async function loadModel(precision) {
  if (model && weights === precision) return model;
  status(`Fetching ${modelDir}…`);
  const started = performance.now();
  const [config, safetensors] = await Promise.all([
    fetchOk(modelDir + "config.json").then((r) => r.text()),
    fetchOk(modelDir + "model.safetensors").then((r) => r.arrayBuffer()),
  ]);
  status("Uploading weights to the GPU…");
  model = await Model.load(config, new Uint8Array(safetensors), precision);
  weights = precision;
  const seconds = ((performance.now() - started) / 1000).toFixed(1);
  status(`${model.adapter} · ${(model.gpuBytes / 2 ** 20).toFixed(1)} MiB on the GPU · loaded in ${seconds} s`);
  return model;
}

async function generate() {
  const prompt = $("prompt").value;
  const maxTokens = Number($("max").value);
  const greedy = $("greedy").checked;
  const sampling = { temperature: greedy ? 0 : Number($("temperature").value), seed: Number($("seed").value) };
  const m = await loadModel($("weights").value);
  const out = $("output");
  out.textContent = "";
  const shown = document.createElement("span");
  shown.className = "prompt";
  shown.textContent = prompt;
  out.append(shown, document.createTextNode(""));
  const text = out.lastChild;

  const session = m.session();
  const promptIds = m.encode(prompt);
  const prefillStart = performance.now();
  await session.prefill(promptIds);
  const prefillMs = performance.now() - prefillStart;

  const decoder = new TextDecoder();
  const ids = [];
  let generated = 0;
  stopRequested = false;
  const decodeStart = performance.now();
  const speed = () => generated / Math.max((performance.now() - decodeStart) / 1000, 1e-9);
  await session.generate(maxTokens, sampling, (bytes, tokens) => {
    ids.push(...tokens);
    generated += tokens.length;
    text.data += decoder.decode(bytes, { stream: true });
    $("speed").textContent = `${speed().toFixed(1)} tokens/s (${generated} tokens)`;
    return !stopRequested;
  });
  text.data += decoder.decode();
  const tokensPerSecond = speed();
  $("speed").textContent = `${tokensPerSecond.toFixed(1)} tokens/s decode (${generated} tokens); ` +
    `prefill ${promptIds.length} tokens in ${prefillMs.toFixed(0)} ms`;
  const result = { ok: true, ids, tokensPerSecond, prefillMs, adapter: m.adapter };
  if (params.has("report")) {
    // For the test: the state survives a save and resume, and the next token follows on.
    const state = await session.save();
    const resumed = m.resume(state);
    result.stateBytes = state.length;
    result.resumedPosition = resumed.position;
    result.resumedNext = await resumed.nextToken(sampling);
  }
  return result;
}

async function run() {
  $("generate").disabled = true;
  $("stop").disabled = false;
  try {
    return await generate();
  } catch (e) {
    status(`error: ${e.message ?? e}`, true);
    return { ok: false, error: String(e.message ?? e) };
  } finally {
    $("generate").disabled = false;
    $("stop").disabled = true;
  }
}

async function report(result) {
  const url = params.get("report");
  if (url) await fetch(url, { method: "POST", body: JSON.stringify(result) });
}

$("generate").addEventListener("click", run);
$("stop").addEventListener("click", () => { stopRequested = true; });

try {
  await init();
  if (!navigator.gpu) throw new Error("this browser has no WebGPU (navigator.gpu is missing)");
  await loadModel($("weights").value);
  $("generate").disabled = false;
  if (params.get("autorun") === "1") await report(await run());
} catch (e) {
  status(`error: ${e.message ?? e}`, true);
  await report({ ok: false, error: String(e.message ?? e) });
}
