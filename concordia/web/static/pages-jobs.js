// The job monitor's live rows and counts, and a job's live log tail. No build step.
"use strict";

(() => {
  const debounce = window.concordiaDebounce;
  const sleep = window.concordiaSleep;
  const shortTime = (iso) => iso.replace("T", " ").slice(0, 19);

  // Status, minor status and update time of one job, wherever they are shown under root.
  // A state older than the one shown is not shown: an answer read before the news that
  // came while it was on its way (the job page's catch-up fetch, racing the stream).
  function showJob(root, job) {
    const shown = root.dataset.updatedAt;
    if (shown && Date.parse(job.updated_at) < Date.parse(shown)) return;
    root.dataset.updatedAt = job.updated_at;
    for (const cell of root.querySelectorAll('[data-field="status"]')) {
      cell.textContent = job.status;
      cell.className = cell.className.replace(/\bstatus-\S+/g, "").trim() + " status-" + job.status;
    }
    const minor = root.querySelector('[data-field="minor_status"]');
    if (minor) minor.textContent = job.minor_status;
    const updated = root.querySelector('[data-field="updated_at"] time');
    if (updated) {
      updated.dateTime = job.updated_at;
      updated.textContent = shortTime(job.updated_at);
    }
  }

  function monitor(form) {
    const query = form.dataset.query;
    const table = document.getElementById("jobs-table");
    const buttons = form.querySelectorAll(".jobs-bulk-bar button");
    const label = document.getElementById("jobs-selected");

    const checked = () => [...table.querySelectorAll('input[name="job"]:checked')];
    const matching = document.getElementById("jobs-matching-input");
    const updateSelection = () => {
      const n = checked().length;
      const offer = document.getElementById("jobs-matching");
      const boxes = table.querySelectorAll('input[name="job"]');
      const wholePage = boxes.length > 0 && n === boxes.length;
      if (!wholePage) matching.value = "";
      if (offer) offer.hidden = !wholePage || matching.value === "1";
      if (matching.value === "1") {
        const total = document.getElementById("jobs-select-matching").dataset.total;
        label.textContent = `All ${total} jobs matching these filters selected:`;
        form.dataset.count = total;
        return;
      }
      label.textContent = n ? `${n} selected:` : "Select jobs for:";
      form.dataset.count = String(n);
      buttons.forEach((b) => { b.disabled = n === 0; });
      const all = document.getElementById("jobs-select-all");
      if (all) all.checked = wholePage;
    };
    table.addEventListener("click", (event) => {
      if (event.target.id !== "jobs-select-matching") return;
      matching.value = "1";
      updateSelection();
    });
    table.addEventListener("change", (event) => {
      if (event.target.id === "jobs-select-all") {
        table.querySelectorAll('input[name="job"]').forEach((box) => { box.checked = event.target.checked; });
      }
      updateSelection();
    });

    const refreshCounts = debounce(() => {
      htmx.ajax("GET", "/jobs/counts?" + query, { target: "#jobs-counts", swap: "outerHTML" });
    }, 400);
    // A job not on the page (a new submission): fetch the rows again.
    const refreshTable = debounce(() => {
      htmx.ajax("GET", "/jobs/table?" + query, { target: "#jobs-table", swap: "innerHTML" });
    }, 600);
    // The selection survives new rows: the boxes checked just before the swap (those checked
    // while the rows were on their way included) are checked again right after it, in the
    // same task, so that no click can fall between. With every job matching the filters
    // selected, every new row is one of them: the rows are the most recently changed first,
    // and a job changing off the page comes onto it.
    let keep = new Set();
    document.body.addEventListener("htmx:beforeSwap", (event) => {
      if (event.detail.target === table) keep = new Set(checked().map((box) => box.value));
    });
    document.body.addEventListener("htmx:afterSwap", (event) => {
      if (event.detail.target !== table) return;
      const everyMatching = matching.value === "1";
      table.querySelectorAll('input[name="job"]').forEach((box) => {
        box.checked = everyMatching || keep.has(box.value);
      });
      updateSelection();
    });

    const source = concordiaJobEvents((job) => {
      const row = table.querySelector(`tr[data-job-id="${Number(job.id)}"]`);
      if (row) {
        showJob(row, job);
        row.classList.remove("jobs-changed");
        void row.offsetWidth; // restart the highlight
        row.classList.add("jobs-changed");
      } else {
        refreshTable();
      }
      refreshCounts();
    });
    // Changes between the page's rendering and the stream's (re)connection are not sent:
    // catch up once connected.
    source.addEventListener("ready", () => { refreshTable(); refreshCounts(); });
    updateSelection();
  }

  // Appends what the job writes, about once a second, until the stream is final.
  async function tail(jobId, pre) {
    let offset = Number(pre.dataset.offset) || 0;
    let final = pre.dataset.final === "true";
    while (!final) {
      let chunk;
      try {
        const url = `/api/v1/jobs/${jobId}/logs?stream=${pre.dataset.stream}&offset=${offset}`;
        const response = await fetch(url, { headers: { Accept: "application/json" } });
        if (!response.ok) throw new Error(String(response.status));
        chunk = await response.json();
      } catch (error) {
        await sleep(5000);
        continue;
      }
      if (chunk.data) {
        const atBottom = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4;
        pre.append(document.createTextNode(chunk.data)); // text, never markup
        if (atBottom) pre.scrollTop = pre.scrollHeight;
      }
      offset = chunk.next_offset;
      final = chunk.final;
      pre.dataset.offset = String(offset);
      if (!final && offset >= chunk.size) await sleep(1000);
    }
    pre.dataset.final = "true";
  }

  function jobPage(root) {
    const jobId = Number(root.dataset.jobId);
    root.querySelectorAll("pre[data-stream]").forEach((pre) => tail(jobId, pre));
    // The head is swapped in anew when the job changes (its actions, Ended, Exit code).
    const head = () => root.querySelector(".job-head");
    const refreshParts = debounce(() => {
      // The page of outputs shown stays the one shown.
      const parts = `/jobs/${jobId}/parts${window.location.search}`;
      htmx.ajax("GET", parts, { target: "#job-outputs", swap: "none" });
    }, 500);
    const source = concordiaJobEvents((job) => {
      if (Number(job.id) !== jobId) return;
      showJob(head(), job);
      refreshParts();
    });
    // "ready": the server listens from now on; what changed before is read once.
    source.addEventListener("ready", async () => {
      const response = await fetch(`/api/v1/jobs/${jobId}`, { headers: { Accept: "application/json" } });
      if (response.ok) showJob(head(), await response.json());
      refreshParts();
    });
  }

  document.addEventListener("DOMContentLoaded", () => {
    // On a phone the jobs come first: the filters fold away unless some are set.
    const panel = document.getElementById("jobs-filter-panel");
    if (panel && panel.dataset.active === "0" && window.matchMedia("(max-width: 40rem)").matches) {
      panel.open = false;
    }
    const form = document.getElementById("jobs-bulk");
    if (form) monitor(form);
    const job = document.getElementById("job");
    if (job) jobPage(job);
  });
})();
