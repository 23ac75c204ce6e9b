// Concordia's little client code shared by the pages: live changes over Server-Sent Events,
// and small timing helpers. No build step.
"use strict";

// Calls onJob(data) for every change of the signed-in user's jobs, reconnecting on errors.
function concordiaJobEvents(onJob) {
  const source = new EventSource("/api/v1/events");
  source.addEventListener("job", (event) => onJob(JSON.parse(event.data)));
  return source;
}
window.concordiaJobEvents = concordiaJobEvents;

// Calls onImage(data) for every image change ({id, application, status}); onReady once the
// stream listens (changes before that were not sent: catch up then).
function concordiaImageEvents(onImage, onReady) {
  const source = new EventSource("/api/v1/events");
  source.addEventListener("image", (event) => onImage(JSON.parse(event.data)));
  source.addEventListener("ready", onReady);
  return source;
}
window.concordiaImageEvents = concordiaImageEvents;

// fn, called at most once per ms however often the returned function is called.
window.concordiaDebounce = (fn, ms) => {
  let timer = null;
  return () => { clearTimeout(timer); timer = setTimeout(fn, ms); };
};
window.concordiaSleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// A button that destroys something asks first, saying what will be lost: its data-confirm,
// where "{n}" is its form's data-count (the jobs selected).
document.addEventListener("submit", (event) => {
  const text = event.submitter && event.submitter.dataset.confirm;
  if (!text) return;
  if (!window.confirm(text.replaceAll("{n}", event.target.dataset.count || ""))) {
    event.preventDefault();
  }
});
