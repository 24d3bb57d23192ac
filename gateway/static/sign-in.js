// The sign-in page: an API key becomes this browser's session cookie (POST /api/v1/session), then back to
// the page that sent the browser here.
"use strict";

const signInForm = document.getElementById("sign-in-form");
const keyInput = document.getElementById("key-input");
const signInError = document.getElementById("sign-in-error");
const signedInAs = document.getElementById("signed-in-as");

// Only a path of this site: an address from the query string must not send the browser elsewhere.
function nextPage() {
  const next = new URLSearchParams(window.location.search).get("next") || "/";
  return next.startsWith("/") && !next.startsWith("//") && !next.startsWith("/\\") ? next : "/";
}

function showSignInError(message) {
  signInError.replaceChildren(el("strong", { text: "Not signed in" }), el("span", { text: capitalize(message) }));
  signInError.classList.remove("hidden");
}

async function showWho() {
  try {
    const me = await apiGet("/api/v1/me");
    signedInAs.textContent = me.kind === "key" ? `Signed in with the key “${me.name}”.` : "Not signed in.";
  } catch (e) {
    signedInAs.textContent = "Not signed in.";
  }
}

signInForm.addEventListener("submit", async (event) => {
  event.preventDefault();
  signInError.classList.add("hidden");
  const response = await fetch("/api/v1/session", {
    method: "POST",
    headers: { "Content-Type": "application/json", Accept: "application/json" },
    body: JSON.stringify({ key: keyInput.value.trim() }),
  });
  if (!response.ok) {
    showSignInError(await apiError(response));
    return;
  }
  window.location.assign(nextPage());
});

document.getElementById("sign-out-button").addEventListener("click", async () => {
  await fetch("/api/v1/session", { method: "DELETE" });
  keyInput.value = "";
  showWho();
});

showWho();
