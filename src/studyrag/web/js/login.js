// Sign-in for a multi-user server: the login form, the first admin's one-time setup, logout.
// A local server never shows any of it (GET /api/auth/me answers mode "local").
import { api, errorBox, h } from "./api.js";

/** Who this browser is: {mode, user, ...}, or null when a multi-user server wants a login. */
export async function whoAmI() {
  try {
    return await api("/api/auth/me");
  } catch (err) {
    if (err.status === 401) return null;
    throw err;
  }
}

function form({ title, intro, submit, testid, onSubmit, fields }) {
  const errors = h("div", { class: "errors", role: "alert" });
  const name = h("input", { type: "text", testid: `${testid}-name`, autocomplete: "username", "aria-label": "User name", placeholder: "User name", maxlength: 64, required: true });
  const password = h("input", { type: "password", testid: `${testid}-password`, autocomplete: fields === "new" ? "new-password" : "current-password", "aria-label": "Password", placeholder: "Password", minlength: fields === "new" ? 8 : 1, maxlength: 1024, required: true });
  const button = h("button", { type: "submit", class: "primary", testid: `${testid}-submit` }, submit);
  const el = h(
    "form",
    {
      class: "login",
      testid,
      onsubmit: async (e) => {
        e.preventDefault();
        button.disabled = true;
        errors.replaceChildren();
        try {
          await onSubmit(name.value.trim(), password.value);
        } catch (err) {
          errors.replaceChildren(errorBox(err));
        } finally {
          button.disabled = false;
        }
      },
    },
    h("h1", {}, title),
    intro ? h("p", {}, intro) : null,
    name,
    password,
    button,
    errors,
  );
  return { el, name };
}

/** The login page; `done` runs once the session cookie is set. */
export function renderLogin(app, done) {
  document.title = "Sign in · StudyRAG";
  const { el, name } = form({
    title: "Sign in to StudyRAG",
    intro: "This server has accounts. Ask its admin for one if you have none.",
    submit: "Sign in",
    testid: "login",
    fields: "current",
    onSubmit: async (user, password) => {
      await api("/api/auth/login", { method: "POST", body: { name: user, password } });
      done();
    },
  });
  app.replaceChildren(h("main", { class: "home" }, el));
  name.focus();
}

/** The first admin's page, from the one-time link the server printed at its first start. */
export function renderSetup(app, token, done) {
  document.title = "Set up · StudyRAG";
  const { el, name } = form({
    title: "Create the first admin",
    intro: "This link works once. The admin can then create accounts with `studyrag users create`.",
    submit: "Create admin",
    testid: "setup",
    fields: "new",
    onSubmit: async (user, password) => {
      await api("/api/auth/setup", { method: "POST", body: { name: user, password, token } });
      done();
    },
  });
  app.replaceChildren(h("main", { class: "home" }, el));
  name.focus();
}

/** A "Sign out" button for the header (multi-user sessions only). */
export function logoutButton(me, done) {
  return h(
    "button",
    {
      type: "button",
      class: "ghost",
      testid: "logout",
      title: `Signed in as ${me.user.name}`,
      onclick: async () => {
        await api("/api/auth/logout", { method: "POST" });
        done();
      },
    },
    `Sign out ${me.user.name}`,
  );
}
