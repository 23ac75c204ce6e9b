// Concordia's little client code: live job changes over Server-Sent Events. No build step.
"use strict";

// Calls onJob(data) for every change of the signed-in user's jobs, reconnecting on errors.
function concordiaJobEvents(onJob) {
  const source = new EventSource("/api/v1/events");
  source.addEventListener("job", (event) => onJob(JSON.parse(event.data)));
  return source;
}
window.concordiaJobEvents = concordiaJobEvents;
