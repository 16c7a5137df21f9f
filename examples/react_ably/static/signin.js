// Sign in (examples/seed.py), then reload: the page then runs the ably-js flows.
const form = document.getElementById('signin');
form.addEventListener('submit', async (event) => {
  event.preventDefault();
  const response = await fetch('/login', { method: 'POST', body: new URLSearchParams(new FormData(form)) });
  if (response.ok) {
    location.reload();
  } else {
    document.getElementById('error').textContent = (await response.json()).error.message;
  }
});
