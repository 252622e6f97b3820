// Boots the API reference at /schema: Swagger UI, served from the package.
//
// No inline code: the page is served under `Content-Security-Policy: script-src 'self'`,
// so it says where the OpenAPI document is in data attributes of #swagger-ui and this
// same-origin file reads them. Nothing here reaches beyond the server (no validator
// badge, no fonts or scripts from a CDN), so the reference renders offline.
(function boot() {
  "use strict";
  const root = document.getElementById("swagger-ui");
  const { specUrl, csrfCookie, csrfHeader } = root.dataset;

  function readCookie(name) {
    const prefix = `${name}=`;
    const row = document.cookie.split("; ").find((entry) => entry.startsWith(prefix));
    return row === undefined ? undefined : decodeURIComponent(row.slice(prefix.length));
  }

  const options = {
    url: specUrl,
    dom_id: "#swagger-ui",
    layout: "BaseLayout",
    presets: [window.SwaggerUIBundle.presets.apis],
    deepLinking: true,
    showExtensions: true,
    showCommonExtensions: true,
    displayRequestDuration: true,
    validatorUrl: null, // the default badge would load an image from validator.swagger.io
  };
  if (csrfCookie && csrfHeader) {
    // Same behaviour as Litestar's own Swagger page when CSRF protection is on.
    options.requestInterceptor = (request) => {
      const token = readCookie(csrfCookie);
      if (token !== undefined) request.headers[csrfHeader] = token;
      return request;
    };
  }
  window.ui = window.SwaggerUIBundle(options);
})();
