// optuna-dashboard calls /api/... from the site root; here it lives under /dashboard (see app/dashboard.py).
(function () {
  const fetch0 = window.fetch;
  window.fetch = function (url, opts) {
    if (typeof url === "string" && /^\/(api|csv)\//.test(url)) url = "/dashboard" + url;
    return fetch0.call(this, url, opts);
  };
})();
