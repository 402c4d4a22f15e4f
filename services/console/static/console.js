// The as-of slider redraws the chart, the state and the table as it moves. Without this
// script the page still works: the slider's form reloads the page with ?t=.
(function () {
  "use strict";
  var slider = document.getElementById("t");
  var region = document.getElementById("asof-region");
  var text = document.getElementById("as_of");
  if (!slider || !region) { return; }
  var start = Number(slider.dataset.startMs);
  var timer = null;
  var asked = 0;

  function mark(instantMs) {
    var rows = document.querySelectorAll("table.timeline tr[data-at]");
    for (var i = 0; i < rows.length; i++) {
      rows[i].classList.toggle("later", parseFloat(rows[i].dataset.at) * 1000 > instantMs);
    }
  }

  function redraw() {
    var value = slider.value;
    var instant = new Date(start + Number(value));
    var iso = instant.toISOString();
    if (text) { text.value = iso; }
    var ticket = ++asked;
    fetch(slider.dataset.url + "?as_of=" + encodeURIComponent(iso), {credentials: "same-origin"})
      .then(function (answer) { return answer.ok ? answer.text() : null; })
      .then(function (html) {
        if (html === null || ticket !== asked) { return; }
        region.innerHTML = html;
        mark(instant.getTime());
        var now = region.querySelector(".asof-now");
        var status = document.getElementById("asof-status");
        if (now && status) { status.textContent = now.textContent; }  // read out, briefly
        history.replaceState(null, "", "?as_of=" + encodeURIComponent(iso));
      });
  }

  slider.addEventListener("input", function () {
    clearTimeout(timer);
    timer = setTimeout(redraw, 80);
  });
})();
