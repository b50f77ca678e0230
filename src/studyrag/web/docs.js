// The API reference at /docs: the vendored Swagger UI over /openapi.json. A file, not an
// inline script, so the page keeps the strict Content-Security-Policy of the web interface.
/* global SwaggerUIBundle */
window.ui = SwaggerUIBundle({
  url: "/openapi.json",
  dom_id: "#swagger-ui",
  layout: "BaseLayout",
  presets: [SwaggerUIBundle.presets.apis],
  deepLinking: true,
  showExtensions: true,
  showCommonExtensions: true,
  // Never ask validator.swagger.io (its badge is a remote image): nothing leaves the server.
  validatorUrl: null,
});
