// brainseg viewer: upload one scan, poll its job, show slices with the predicted tumour.
// Plain browser JavaScript, no libraries, nothing fetched from anywhere but this server.
"use strict";

(function () {
  const $ = (id) => document.getElementById(id);
  const state = { job: null, info: null, k: 0, n: 0, cache: new Map(), drawToken: 0 };
  // Timings of the last upload (ms since the file was chosen), read by the benchmark and tests.
  window.brainseg = { times: {}, state: state };

  function setState(s) { document.body.dataset.state = s; }

  function showError(msg) {
    $("error").textContent = msg;
    $("error").hidden = false;
    $("progress-box").hidden = true;
    setState("error");
  }

  function progress(label, fraction) {
    $("progress-box").hidden = false;
    $("progress-label").textContent = label;
    $("progress").value = Math.round(100 * fraction);
  }

  fetch("/api/info").then((r) => r.json()).then((info) => {
    state.info = info;
    const models = info.models.map((m) => m.model).join(" + ");
    $("model-line").textContent = `model: ${models} · ${info.n_views} view(s) per pixel · ` +
      `threshold ${info.postprocessing.threshold} · uploads up to ${info.max_upload_mb} MiB`;
    $("host").textContent = info.host;
    $("rule").textContent = "Needs-review rule: " + info.review_rule + ".";
  }).catch(() => { $("model-line").textContent = "the server did not answer /api/info"; });

  function upload(file) {
    $("error").hidden = true;
    $("viewer").hidden = true;
    state.cache.clear();
    window.brainseg.times = { chosen: performance.now() };
    setState("uploading");
    progress(`uploading ${file.name}…`, 0);
    const form = new FormData();
    form.append("file", file, file.name);
    const xhr = new XMLHttpRequest();
    xhr.open("POST", "/api/jobs");
    xhr.upload.onprogress = (e) => { if (e.lengthComputable) progress(`uploading ${file.name}…`, e.loaded / e.total); };
    xhr.onerror = () => showError("the upload failed: the server did not answer");
    xhr.onload = () => {
      let body = {};
      try { body = JSON.parse(xhr.responseText); } catch (err) { body = { error: xhr.responseText }; }
      if (xhr.status !== 202) { showError(`${file.name} was refused (HTTP ${xhr.status}): ${body.error || body.detail || "no reason given"}`); return; }
      window.brainseg.times.accepted = performance.now();
      setState("segmenting");
      poll(body.id);
    };
    xhr.send(form);
  }

  function poll(id) {
    fetch(`/api/jobs/${id}`).then((r) => r.json().then((b) => [r.status, b])).then(([status, job]) => {
      if (status !== 200) { showError(job.error || `HTTP ${status}`); return; }
      if (job.status === "failed") { showError(`segmentation failed: ${job.error}`); return; }
      if (!job.ready) {
        progress(`segmenting ${job.n_slices} slice(s)…`, job.progress);
        setTimeout(() => poll(id), 100);
        return;
      }
      window.brainseg.times.ready = performance.now();
      show(job);
      if (job.status !== "done") waitForFiles(id);
    }).catch((err) => showError(`lost the server: ${err}`));
  }

  function waitForFiles(id) {  // downloads are offered once the result files are written
    fetch(`/api/jobs/${id}`).then((r) => r.json()).then((job) => {
      if (job.status === "running") { setTimeout(() => waitForFiles(id), 200); return; }
      $("downloads").hidden = job.status !== "done";
      if (job.status === "done") setState("done");
    });
  }

  function fmt(x, digits) { return x === null || x === undefined ? "–" : Number(x).toFixed(digits); }

  function ranges(ks) {  // [3,4,5,9] → "3–5, 9" (1-based slice numbers, as the viewer shows them)
    const out = [];
    for (let i = 0; i < ks.length; i++) {
      let j = i;
      while (j + 1 < ks.length && ks[j + 1] === ks[j] + 1) j++;
      out.push(i === j ? `${ks[i] + 1}` : `${ks[i] + 1}–${ks[j] + 1}`);
      i = j;
    }
    return out.join(", ");
  }

  function show(job) {
    const f = job.figures;
    state.job = job;
    state.n = job.n_slices;
    $("progress-box").hidden = true;
    $("viewer").hidden = false;
    $("downloads").hidden = job.status !== "done";
    $("case-name").textContent = `${job.name} — ${job.n_slices} slice(s), ${f.width}×${f.height} px`;
    $("f-volume").textContent = f.volume_ml !== null ? `${fmt(f.volume_ml, 2)} mL (${f.volume_px} voxels)` : `${f.volume_px} pixels`;
    $("f-slices").textContent = f.slices_involved.length ? `${f.slices_involved.length} (${ranges(f.slices_involved)})` : "none";
    $("f-diameter").textContent = f.largest_diameter_mm !== null ? `${fmt(f.largest_diameter_mm, 1)} mm` : `${fmt(f.largest_diameter_px, 1)} pixels`;
    $("f-prob").textContent = fmt(f.prob_max, 3);
    $("size-note").hidden = !f.size_note;
    $("size-note").textContent = f.size_note || "";
    const review = $("review");
    review.hidden = f.needs_review === null;
    review.className = f.needs_review ? "flag" : "ok";
    review.textContent = f.needs_review
      ? `Needs review: the views disagree on ${f.disputed_px} pixel(s), many for ${f.volume_px} predicted tumour pixel(s).`
      : `Views agree: ${f.disputed_px} disputed pixel(s) for ${f.volume_px} predicted tumour pixel(s).`;
    $("rule").textContent = "Needs-review rule: " + f.review_rule + ".";
    const oneChannel = job.channels === 1;
    $("channel").disabled = oneChannel;
    if (oneChannel) $("channel").value = "1";
    $("layer").querySelector("option[value=uncertainty]").disabled = f.needs_review === null;
    for (const [id, file] of [["dl-masks", "masks.zip"], ["dl-csv", "volumes.csv"], ["dl-json", "figures.json"]]) {
      $(id).href = `/api/jobs/${job.id}/${file}`;
    }
    const slider = $("slice");
    slider.max = String(state.n - 1);
    // start on the slice with the most tumour: what the person came to see
    const areas = f.slice_area_px;
    state.k = areas.indexOf(Math.max(...areas));
    buildThumbs(job, f);
    setState(job.status === "done" ? "done" : "ready");
    draw();
    $("view").focus();
  }

  function buildThumbs(job, f) {
    const box = $("thumbs");
    box.replaceChildren();
    const involved = new Set(f.slices_involved);
    for (let k = 0; k < state.n; k++) {
      const im = document.createElement("img");
      im.loading = "lazy";
      im.src = `/api/jobs/${job.id}/slices/${k}/image.png?channel=${$("channel").value}`;
      im.alt = `slice ${k + 1}${involved.has(k) ? " (tumour)" : ""}`;
      im.title = im.alt;
      if (involved.has(k)) im.classList.add("tumour");
      im.addEventListener("click", () => go(k));
      box.appendChild(im);
    }
  }

  function layerImage(k, layer) {
    const ch = $("channel").value;
    const key = `${state.job.id}/${k}/${layer}/${layer === "image" ? ch : ""}`;
    if (!state.cache.has(key)) {
      state.cache.set(key, new Promise((resolve, reject) => {
        const im = new Image();
        im.onload = () => resolve(im);
        im.onerror = () => reject(new Error(`slice ${k + 1}: ${layer} did not load`));
        im.src = `/api/jobs/${state.job.id}/slices/${k}/${layer}.png` + (layer === "image" ? `?channel=${ch}` : "");
      }));
    }
    return state.cache.get(key);
  }

  function draw() {
    const k = state.k, layer = $("layer").value, token = ++state.drawToken;
    $("slice").value = String(k);
    $("slice-out").textContent = `${k + 1} / ${state.n}`;
    const opacity = Number($("opacity").value) / 100;
    $("opacity-out").textContent = `${Math.round(opacity * 100)}%`;
    const wanted = [layerImage(k, "image")];
    if (layer !== "none") wanted.push(layerImage(k, layer));
    Promise.all(wanted).then(([img, over]) => {
      if (token !== state.drawToken) return;  // a newer draw was asked for meanwhile
      const c = $("view"), ctx = c.getContext("2d");
      if (c.width !== img.naturalWidth || c.height !== img.naturalHeight) {
        c.width = img.naturalWidth; c.height = img.naturalHeight;
      }
      ctx.imageSmoothingEnabled = false;
      ctx.globalAlpha = 1;
      ctx.drawImage(img, 0, 0);
      if (over) { ctx.globalAlpha = opacity; ctx.drawImage(over, 0, 0); ctx.globalAlpha = 1; }
      if (!window.brainseg.times.firstOverlay) window.brainseg.times.firstOverlay = performance.now();
      c.dataset.drawn = `${k}:${layer}:${Math.round(opacity * 100)}`;
      for (const [i, t] of Array.from($("thumbs").children).entries()) t.classList.toggle("current", i === k);
      // fetch the neighbours ahead, so moving through slices does not wait for the server
      for (const j of [k - 1, k + 1]) if (j >= 0 && j < state.n) { layerImage(j, "image"); if (layer !== "none") layerImage(j, layer); }
    }).catch((err) => showError(String(err.message || err)));
  }

  function go(k) {
    if (!state.job) return;
    state.k = Math.max(0, Math.min(state.n - 1, k));
    draw();
  }

  $("file").addEventListener("change", (e) => { if (e.target.files.length) upload(e.target.files[0]); });
  const drop = $("drop");
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault(); drop.classList.remove("over");
    if (e.dataTransfer.files.length) upload(e.dataTransfer.files[0]);
  });
  $("slice").addEventListener("input", (e) => go(Number(e.target.value)));
  $("opacity").addEventListener("input", draw);
  $("layer").addEventListener("change", draw);
  $("channel").addEventListener("change", () => { if (state.job) { buildThumbs(state.job, state.job.figures); draw(); } });
  $("view").addEventListener("wheel", (e) => { e.preventDefault(); go(state.k + (e.deltaY > 0 ? 1 : -1)); }, { passive: false });
  document.addEventListener("keydown", (e) => {
    // form controls keep their own keys (a focused slider already moves with the arrows)
    if (!state.job || e.target.tagName === "INPUT" || e.target.tagName === "SELECT") return;
    const step = { ArrowDown: 1, j: 1, ArrowUp: -1, k: -1, PageDown: 5, PageUp: -5 }[e.key];
    if (step !== undefined) { e.preventDefault(); go(state.k + step); }
    if (e.key === "o") { const l = $("layer"); l.value = l.value === "none" ? "fill" : "none"; draw(); }
  });
})();
