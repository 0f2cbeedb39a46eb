// optuna-dashboard calls /api/... and links /csv/... from the site root; here it lives under /dashboard
// (see app/dashboard.py), so both are sent there.
(function () {
  const fetch0 = window.fetch;
  window.fetch = function (url, opts) {
    if (typeof url === "string" && /^\/(api|csv)\//.test(url)) url = "/dashboard" + url;
    return fetch0.call(this, url, opts);
  };
  document.addEventListener("click", function (ev) {
    const a = ev.target && ev.target.closest ? ev.target.closest('a[href^="/csv/"]') : null;
    if (a) a.setAttribute("href", "/dashboard" + a.getAttribute("href"));
  }, true);
})();
