// The image catalogue's live table, an image's live build log, and the Concordia form's
// image line kept current. No build step.
"use strict";

(() => {
  const debounce = window.concordiaDebounce;
  const sleep = window.concordiaSleep;

  function catalogue(holder) {
    const application = holder.dataset.application;
    const url = "/images/table" + (application ? "?application=" + encodeURIComponent(application) : "");
    const refresh = debounce(() => {
      htmx.ajax("GET", url, { target: "#images-table", swap: "innerHTML" });
    }, 300);
    concordiaImageEvents((image) => { if (!application || image.application === application) refresh(); }, refresh);
  }

  function imagePage(root) {
    const id = root.dataset.imageId;
    const pre = document.getElementById("image-log");
    const state = document.getElementById("image-log-state");
    let shown = root.dataset.status;
    let following = false;

    const showStatus = (status) => {
      shown = status;
      root.dataset.status = status;
      for (const badge of root.querySelectorAll('[data-field="status"]')) {
        badge.textContent = status;
        badge.className = "image-status image-status-" + status;
      }
    };
    const refreshParts = () => {
      htmx.ajax("GET", `/images/${id}/parts`, { target: "#image-parts", swap: "none" });
    };
    const append = (text) => {
      const atBottom = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4;
      pre.append(document.createTextNode(text)); // text, never markup
      if (atBottom) pre.scrollTop = pre.scrollHeight;
    };

    // The whole log again, chunk by chunk: after a lost connection, what was missed is
    // read rather than guessed. Returns where the stream goes on from.
    async function reload() {
      let text = "";
      let offset = 0;
      for (;;) {
        const response = await fetch(`/api/v1/images/${id}/log?offset=${offset}`);
        if (!response.ok) throw new Error(String(response.status));
        const chunk = await response.text();
        const next = Number(response.headers.get("X-Log-Offset"));
        text += chunk;
        if (!chunk || next === offset) break;
        offset = next;
      }
      pre.textContent = text;
      pre.scrollTop = pre.scrollHeight;
      return offset;
    }

    // The build's phase, and a bar where the log gives n of N (packages, steps).
    function showProgress(progress) {
      const box = document.getElementById("image-build-progress");
      if (!box) return;
      const known = progress.done !== null && progress.total;
      box.querySelector(".phase").textContent = known
        ? `${progress.phase} ${progress.done}/${progress.total}` : progress.phase;
      const bar = box.querySelector("progress");
      bar.hidden = !known;
      if (known) { bar.max = progress.total; bar.value = progress.done; }
      box.hidden = false;
    }

    // The log as the build writes it; "end" comes with the final status (also at once for
    // an image not building: the rest of a long log, if any, then the end).
    function follow(offset) {
      following = true;
      const wasBuilding = shown === "building";
      const source = new EventSource(`/api/v1/images/${id}/log/events?offset=${offset}`);
      source.addEventListener("log", (event) => append(JSON.parse(event.data).text));
      source.addEventListener("progress", (event) => showProgress(JSON.parse(event.data)));
      source.addEventListener("end", (event) => {
        source.close(); // else EventSource reconnects and the log would start over
        following = false;
        const end = JSON.parse(event.data);
        if (wasBuilding) {
          state.textContent = end.status === "ready"
            ? "The build has finished: the image is ready."
            : `The build has ended: ${end.status}.`;
        }
        if (end.status !== shown) {
          showStatus(end.status);
          refreshParts();
        }
      });
      source.onerror = async () => {
        source.close();
        await sleep(3000);
        try {
          follow(await reload());
        } catch (error) {
          following = false;
          state.textContent = "The log can no longer be read: reload the page.";
        }
      };
    }

    concordiaImageEvents((image) => {
      if (image.id !== id || following) return;
      if (image.status === "building") { // built again (here or elsewhere): a new log
        pre.textContent = "";
        pre.dataset.empty = "(nothing yet)";
        state.textContent = "A new build has started: its log follows live.";
        showStatus("building");
        refreshParts();
        follow(0);
      } else if (image.status !== shown) {
        showStatus(image.status);
        if (image.status === "deleted") state.textContent = "This image has been deleted.";
        else refreshParts();
      }
    }, () => {});
    pre.scrollTop = pre.scrollHeight; // the end of a log says how the build went
    follow(Number(pre.dataset.offset) || 0);
  }

  // The Concordia form: when the image it shows changes (its build starts or ends), the
  // form is checked again, which renders the image line anew.
  function watchForm(checked) {
    concordiaImageEvents((image) => {
      const line = document.querySelector("[data-image-watch]");
      if (line && line.dataset.imageWatch === image.id) htmx.trigger(checked, "change");
    }, () => {});
  }

  document.addEventListener("DOMContentLoaded", () => {
    const table = document.getElementById("images-table");
    if (table) catalogue(table);
    const image = document.getElementById("image");
    if (image) imagePage(image);
    const checked = document.querySelector(".concordia-form .checked");
    if (checked && document.getElementById("concordia-image")) watchForm(checked);
  });
})();
