// SeedStory: after Save Story runs, show its sentences on the node, a button that opens the storybook page
// (served by the pack's route GET /seedstory/storybook/<folder>/index.html, nodes/routes.py) and, when the node
// wrote one (input pdf), a button that opens the PDF (GET /seedstory/storybook/<folder>/story.pdf).
// The frames themselves are shown by ComfyUI from the node's "images" output.
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";

const NODE = "SeedStorySaveStory";

function storybookUrl(relative) {
  const path = relative.split("/").map(encodeURIComponent).join("/");
  return api.apiURL(`/seedstory/storybook/${path}`);
}

app.registerExtension({
  name: "seedstory.SaveStory",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (nodeData?.name !== NODE) return;
    const onExecuted = nodeType.prototype.onExecuted;
    nodeType.prototype.onExecuted = function (message) {
      onExecuted?.apply(this, arguments);
      const text = (message?.text || []).join("\n");
      const book = (message?.storybook || [])[0];
      let shown = this.widgets?.find((w) => w.name === "story_text");
      if (!shown) {
        shown = this.addWidget("text", "story_text", "", () => {}, { multiline: true, serialize: false });
        shown.serialize = false;
      }
      shown.value = text;
      let button = this.widgets?.find((w) => w.name === "open storybook");
      if (!button) {
        button = this.addWidget("button", "open storybook", null, () => {
          if (this.seedstoryBook) window.open(storybookUrl(this.seedstoryBook), "_blank");
        });
        button.serialize = false;
      }
      this.seedstoryBook = book || null;
      const pdf = (message?.pdf || [])[0];
      let pdfButton = this.widgets?.find((w) => w.name === "open PDF");
      if (pdf && !pdfButton) {
        pdfButton = this.addWidget("button", "open PDF", null, () => {
          if (this.seedstoryPdf) window.open(storybookUrl(this.seedstoryPdf), "_blank");
        });
        pdfButton.serialize = false;
      }
      if (pdfButton) pdfButton.disabled = !pdf;
      this.seedstoryPdf = pdf || null;
      this.setDirtyCanvas?.(true, true);
    };
  },
});
