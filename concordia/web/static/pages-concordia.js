// The Concordia form and the submission page: small helpers on top of htmx and concordia.js.
"use strict";

// The check swaps in only the messages (the inputs keep what is being typed, the Submit
// button a click on it): mark each input invalid or not, and the button usable or not,
// from the messages.
function concordiaFollowMessages() {
  for (const message of document.querySelectorAll("[data-error-for]")) {
    const input = document.getElementById(message.dataset.errorFor);
    if (input) input.setAttribute("aria-invalid", message.hidden ? "false" : "true");
  }
  // Likewise the Submit button, from the reason it cannot be used.
  const submit = document.getElementById("concordia-submit");
  const why = document.getElementById("submit-why");
  if (submit && why) {
    submit.disabled = !why.hidden;
    if (why.hidden) submit.removeAttribute("aria-describedby");
    else submit.setAttribute("aria-describedby", "submit-why");
  }
}

// A submission's page: each job event updates its row at once; the progress (and, after
// a reconnect, every row) is fetched again, at most once per `wait` ms.
function concordiaFollowSubmission(root) {
  const id = Number(root.dataset.submission);
  const wait = 400;
  let timer = null;
  let rowsToo = false;
  const refresh = () => {
    timer = null;
    htmx.ajax("GET", `/submissions/${id}/progress`, { target: "#submission-progress", swap: "outerHTML" });
    if (rowsToo) {
      rowsToo = false;
      const page = Number(document.getElementById("submission-rows").dataset.page) || 1;
      htmx.ajax("GET", `/submissions/${id}/rows?page=${page}`, { target: "#submission-rows", swap: "innerHTML" });
    }
  };
  const later = () => { if (timer === null) timer = setTimeout(refresh, wait); };
  const source = concordiaJobEvents((job) => {
    if (job.submission_id !== id) return;
    const row = document.getElementById(`job-${job.id}`);
    if (row) {
      const cell = row.querySelector(".status");
      cell.textContent = job.status;
      cell.className = `status status-${job.status}`;
      row.querySelector(".minor").textContent = job.minor_status;
    }
    later();
  });
  // "ready" comes once the stream listens: whatever changed before it is fetched then.
  source.addEventListener("ready", () => { rowsToo = true; later(); });
}

document.addEventListener("DOMContentLoaded", () => {
  document.body.addEventListener("htmx:afterSettle", concordiaFollowMessages);
  document.body.addEventListener("htmx:oobAfterSwap", concordiaFollowMessages);
  const summary = document.querySelector(".summary[role=alert]");
  if (summary) summary.focus();
  const submission = document.querySelector("[data-submission]");
  if (submission) concordiaFollowSubmission(submission);
});
