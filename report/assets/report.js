// Sortable tables for the metaharness report: a click (or Enter / Space) on a column header sorts the
// rows by that column, a second click reverses the order. Numbers sort as numbers ("0.79 ± 0.07",
// "1=", "111,936", "<0.001"), text as text; empty cells go last either way. No dependencies, works
// from file://.
"use strict";

(function () {
  const NUMBER = /^[<>≤≥~]?\s*[-+]?(\d[\d,]*\.?\d*|\.\d+)(e[-+]?\d+)?/i;

  function cellText(cell) {
    return (cell.dataset.sort !== undefined ? cell.dataset.sort : cell.textContent).trim();
  }

  function numberOf(text) {
    const match = NUMBER.exec(text);
    if (!match) return NaN;
    const value = parseFloat(match[0].replace(/^[<>≤≥~]\s*/, "").replace(/,/g, ""));
    // "<0.001" sorts just below 0.001, ">100" just above 100.
    if (/^[<≤]/.test(text)) return value * (1 - 1e-9) - 1e-300;
    if (/^[>≥]/.test(text)) return value * (1 + 1e-9) + 1e-300;
    return value;
  }

  function isNumeric(rows, index) {
    let seen = false;
    for (const row of rows) {
      const text = cellText(row.cells[index]);
      if (text === "") continue;
      if (Number.isNaN(numberOf(text))) return false;
      seen = true;
    }
    return seen;
  }

  function sortBy(table, index) {
    const header = table.tHead.rows[0].cells[index];
    const body = table.tBodies[0];
    const rows = Array.from(body.rows);
    const ascending = header.getAttribute("aria-sort") !== "ascending";
    const numeric = isNumeric(rows, index);
    const keyed = rows.map((row, position) => {
      const text = cellText(row.cells[index]);
      return { row, position, empty: text === "", key: numeric ? numberOf(text) : text.toLowerCase() };
    });
    const direction = ascending ? 1 : -1;
    keyed.sort((a, b) => {
      if (a.empty !== b.empty) return a.empty ? 1 : -1;
      if (a.key < b.key) return -direction;
      if (a.key > b.key) return direction;
      return a.position - b.position;  // stable: equal keys keep their order
    });
    for (const cell of table.tHead.rows[0].cells) cell.removeAttribute("aria-sort");
    header.setAttribute("aria-sort", ascending ? "ascending" : "descending");
    for (const item of keyed) body.appendChild(item.row);
  }

  function enable(table) {
    if (!table.tHead || !table.tBodies.length) return;
    Array.from(table.tHead.rows[0].cells).forEach((header, index) => {
      header.tabIndex = 0;
      header.title = "sort by this column";
      header.addEventListener("click", () => sortBy(table, index));
      header.addEventListener("keydown", (event) => {
        if (event.key === "Enter" || event.key === " ") {
          event.preventDefault();
          sortBy(table, index);
        }
      });
    });
  }

  document.querySelectorAll("table.sortable").forEach(enable);
})();
