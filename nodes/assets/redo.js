// SeedStory storybook page: the "redo" buttons (served by the pack at /seedstory/redo.js, nodes/routes.py).
//
// A storybook written by Save Story inside ComfyUI holds prompt.json: {"prompt": <the API prompt that made it>,
// "save_node": "<Save Story's node id>"}. A click on frame k's button (<button class="seedstory-redo"
// data-frame="k">) fetches it, adds a SeedStory Redo Frame node (frame k, a new random seed, sentences kept) on the
// story output of the node that made the frames (Generate Story: output 3; an earlier Redo Frame: output 2), wires
// Save Story's images and sentences to it, POSTs the prompt to /prompt, polls /history/<prompt_id> until it is done
// and opens the new storybook (/seedstory/storybook/<Save Story's "storybook" output>). ComfyUI's cache answers the
// unchanged nodes (the story itself when the server still holds it), so only the redo runs.
(function () {
  "use strict";

  var REDO_NODE = "SeedStoryRedoFrame";
  // the node types whose frames a redo can replace, and the index of their "story" output
  var STORY_OUTPUT = { SeedStoryGenerateStory: 3, SeedStoryRedoFrame: 2 };
  var POLL_MS = 500;

  function redoPrompt(saved, frame, seed) {
    // The prompt of prompt.json with frame `frame` redone: {prompt, node} (node: the new Redo Frame node's id).
    if (!saved || typeof saved.prompt !== "object" || saved.save_node === undefined) {
      throw new Error("prompt.json is not a SeedStory storybook prompt (expected {prompt, save_node})");
    }
    var prompt = JSON.parse(JSON.stringify(saved.prompt));
    var saveId = String(saved.save_node);
    var save = prompt[saveId];
    if (!save || !save.inputs || !Array.isArray(save.inputs.images)) {
      throw new Error("prompt.json names Save Story node " + saveId + ", but the prompt has no such node with images");
    }
    var sourceId = String(save.inputs.images[0]);
    var source = prompt[sourceId];
    if (!source || !(source.class_type in STORY_OUTPUT)) {
      throw new Error(
        "this storybook's frames come from " + (source ? source.class_type : "no node") +
        ", not from SeedStory Generate Story or Redo Frame: only their stories can be redone"
      );
    }
    var ids = Object.keys(prompt).map(Number).filter(function (n) { return isFinite(n); });
    var node = String(Math.max.apply(null, [0].concat(ids)) + 1);
    prompt[node] = {
      class_type: REDO_NODE,
      inputs: {
        agent: source.inputs.agent,
        detokenizer: source.inputs.detokenizer,
        story: [sourceId, STORY_OUTPUT[source.class_type]],
        frame: frame,
        seed: seed,
        after: "keep_sentences",
        sentence: "",
      },
      _meta: { title: "SeedStory Redo Frame (frame " + frame + ")" },
    };
    if (source.inputs.visual_tokenizer !== undefined) {
      // a story drawn with the consistency retry is redone with it, which tokenizes each drawing
      prompt[node].inputs.visual_tokenizer = source.inputs.visual_tokenizer;
    }
    save.inputs.images = [node, 0];
    save.inputs.sentences = [node, 1];
    if (Array.isArray(save.inputs.state) && String(save.inputs.state[0]) === sourceId) {
      delete save.inputs.state; // the old story's final state: the redone story has its own sentences
    }
    return { prompt: prompt, node: node };
  }

  function status(text, isError) {
    var box = document.getElementById("seedstory-redo-status");
    if (!box) {
      box = document.createElement("div");
      box.id = "seedstory-redo-status";
      box.setAttribute("role", "status");
      box.style.cssText =
        "position:fixed;left:1em;bottom:1em;padding:.5em 1em;background:#222;color:#fff;border-radius:6px;" +
        "font:14px sans-serif;max-width:40em;z-index:10";
      document.body.appendChild(box);
    }
    box.textContent = text;
    box.style.background = isError ? "#8b1a1a" : "#222";
    box.dataset.state = isError ? "error" : "busy";
  }

  function errorText(body) {
    // POST /prompt's refusal: the error and every node error, in one line.
    var parts = [];
    if (body && body.error) parts.push(body.error.message || JSON.stringify(body.error));
    var nodes = (body && body.node_errors) || {};
    Object.keys(nodes).forEach(function (id) {
      (nodes[id].errors || []).forEach(function (e) {
        parts.push("node " + id + " (" + nodes[id].class_type + "): " + (e.details || e.message));
      });
    });
    return parts.join("; ") || JSON.stringify(body);
  }

  function sleep(ms) {
    return new Promise(function (resolve) { setTimeout(resolve, ms); });
  }

  async function waitFor(promptId, saveId) {
    for (;;) {
      var res = await fetch("/history/" + encodeURIComponent(promptId), { cache: "no-store" });
      var entry = res.ok ? (await res.json())[promptId] : null;
      var st = entry && entry.status;
      if (st && (st.completed || st.status_str === "error")) {
        if (st.status_str !== "success") {
          var msg = (st.messages || []).filter(function (m) { return m[0] === "execution_error"; })[0];
          throw new Error(msg ? msg[1].exception_message : "the prompt failed (" + st.status_str + ")");
        }
        var out = (entry.outputs || {})[saveId] || {};
        if (!out.storybook || !out.storybook.length) throw new Error("Save Story reported no storybook");
        return out.storybook[0];
      }
      await sleep(POLL_MS);
    }
  }

  async function redo(frame, buttons) {
    buttons.forEach(function (b) { b.disabled = true; });
    try {
      status("Redoing frame " + frame + "\u2026");
      var saved = await (await fetch("prompt.json", { cache: "no-store" })).json();
      var seed = Math.floor(Math.random() * 1e15);
      var job = redoPrompt(saved, frame, seed);
      var res = await fetch("/prompt", {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ prompt: job.prompt }),
      });
      var body = await res.json();
      if (!res.ok || !body.prompt_id) throw new Error("ComfyUI refused the prompt: " + errorText(body));
      status("Redoing frame " + frame + " (prompt " + body.prompt_id + ")\u2026");
      var book = await waitFor(body.prompt_id, String(saved.save_node));
      status("Done: opening the new storybook");
      window.location.href = "/seedstory/storybook/" + encodeURI(book);
    } catch (err) {
      status("Redo failed: " + (err && err.message ? err.message : err), true);
      buttons.forEach(function (b) { b.disabled = false; });
    }
  }

  function init() {
    var buttons = Array.prototype.slice.call(document.querySelectorAll("button.seedstory-redo"));
    buttons.forEach(function (button) {
      button.title = "Redo this frame with a new seed (the frames before it stay; the later ones keep their sentences)";
      button.addEventListener("click", function () {
        redo(parseInt(button.dataset.frame, 10), buttons);
      });
    });
  }

  window.SeedStoryRedo = { redoPrompt: redoPrompt };
  if (typeof document !== "undefined") {
    if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", init);
    else init();
  }
})();
