() => {
  // Counts finished script runs (the app root's script state going from "running" back to "notRunning"),
  // however short the run: returns the count so far. Evaluated by the latency benches and the browser tests.
  if (window.__nullvizRuns === undefined) {
    window.__nullvizRuns = 0;
    const app = document.querySelector("[data-testid='stApp']");
    let last = app.getAttribute("data-test-script-state");
    new MutationObserver(() => {
      const now = app.getAttribute("data-test-script-state");
      if (last === "running" && now === "notRunning") window.__nullvizRuns += 1;
      last = now;
    }).observe(app, {attributes: true, attributeFilter: ["data-test-script-state"]});
  }
  return window.__nullvizRuns;
}
