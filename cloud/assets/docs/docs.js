// Interactive API docs over this server's own /openapi.json. Everything is served by the
// cloud itself: no CDN, no request leaves this origin.
window.ui = SwaggerUIBundle({
  url: "/openapi.json",
  dom_id: "#docs",
  deepLinking: true,
  tryItOutEnabled: false,
  // Validation would send the document to validator.swagger.io.
  validatorUrl: null,
});
