// The report form's people search as you type: the people found appear as checkboxes
// under the search box. Without this script the form's Search button does the same in
// a round trip (step=search), so the form works without JavaScript.
(function () {
  "use strict";
  var boxes = document.querySelectorAll("input[data-people-search]");

  function item(field, person) {
    var li = document.createElement("li");
    var label = document.createElement("label");
    var box = document.createElement("input");
    box.type = "checkbox";
    box.name = field + "_id";
    box.value = person.id;
    label.appendChild(box);
    label.appendChild(document.createTextNode(" " + (person.name || person.id)));
    if (person.unit) {
      var unit = document.createElement("span");
      unit.className = "unit";
      unit.textContent = " (" + person.unit + ")";
      label.appendChild(unit);
    }
    li.appendChild(label);
    return li;
  }

  function show(field, list, people) {
    var kept = {};
    var items = list.querySelectorAll("li");
    for (var i = 0; i < items.length; i++) {
      var box = items[i].querySelector("input");
      if (box && box.checked) { kept[box.value] = true; } else { list.removeChild(items[i]); }
    }
    for (var j = 0; j < people.length; j++) {
      if (!kept[people[j].id]) { list.appendChild(item(field, people[j])); }
    }
  }

  Array.prototype.forEach.call(boxes, function (search) {
    var field = search.dataset.peopleSearch;
    var list = document.getElementById(field + "-picks");
    var timer = null;
    var asked = 0;
    if (!list) { return; }
    search.addEventListener("input", function () {
      clearTimeout(timer);
      timer = setTimeout(function () {
        var q = search.value.trim();
        if (q.length < 2) { return; }
        var ticket = ++asked;
        // credentials omitted: the search is the same for everyone, and anonymous
        fetch("/v1/people/search?q=" + encodeURIComponent(q), {credentials: "omit"})
          .then(function (answer) { return answer.ok ? answer.json() : null; })
          .then(function (found) {
            if (found && ticket === asked) { show(field, list, found.people); }
          })
          .catch(function () { /* the Search button still works */ });
      }, 250);
    });
  });
})();
