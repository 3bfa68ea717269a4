"""A person uploads a model in a real browser and watches it become staged."""

import os
from pathlib import Path

import numpy as np
import pytest

from tests.onnx_models import large_mlp, save

pytestmark = [
    pytest.mark.browser,
    pytest.mark.slow,
    pytest.mark.django_db(transaction=True),
    pytest.mark.usefixtures("roles"),
]

# Playwright's sync API keeps an event loop in this thread; the ORM calls here are still synchronous.
os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")


# Progress widths are kept in sessionStorage: the upload page navigates away once the upload is done.
RECORD_PROGRESS = """() => {
  const bar = document.getElementById('progress-bar');
  new MutationObserver(() => {
    const seen = JSON.parse(sessionStorage.getItem('progress') || '[]');
    seen.push(bar.style.width);
    sessionStorage.setItem('progress', JSON.stringify(seen));
  }).observe(bar, {attributes: true, attributeFilter: ['style']});
}"""


def test_upload_in_the_browser_shows_progress_and_becomes_staged(
    page: object, login: object, live_server: object, celery_worker: object, operator: object, store: Path, tmp_path
) -> None:
    model_path = save(large_mlp(3 * 1024 * 1024, n_features=4, n_classes=3), tmp_path / "detector.onnx")
    ref = tmp_path / "reference.npz"
    np.savez(ref, input=np.random.default_rng(0).normal(size=(200, 4)).astype(np.float32))

    failed: list[str] = []
    page.on("response", lambda r: failed.append(f"{r.status} {r.url}") if r.status >= 400 else None)
    login(page, "olivia", "pw-olivia-123")
    page.goto(f"{live_server.url}/models/")
    assert "No models yet" in page.inner_text("main")
    page.click("text=Upload your first model")
    page.wait_for_selector("#dropzone")

    page.set_input_files("#file-input", str(model_path))
    assert "detector.onnx" in page.inner_text("#file-chosen")
    page.fill("#name-input", "detector")
    page.fill("#label-input", "v1")
    page.fill("textarea[name=notes]", "first upload from the browser")
    page.set_input_files("input[name=reference]", str(ref))
    page.check("input[name=int8]")
    page.evaluate(RECORD_PROGRESS)
    page.click("#upload-button")

    page.wait_for_url(f"{live_server.url}/models/detector/versions/v1/", timeout=30_000)
    widths = page.evaluate("JSON.parse(sessionStorage.getItem('progress') || '[]')")
    assert widths and widths[-1] == "100%", widths
    page.wait_for_selector("#version-status[data-status=staged]", timeout=60_000)
    main = page.inner_text("main")
    assert "staged" in main and "first upload from the browser" in main
    assert "int8" in main and "input[3]" in main
    page.wait_for_selector("#chart-output .main-svg", timeout=10_000)  # Plotly drew the profile
    # Only the browser's own favicon probe may 404; no script error, no failed request of ours.
    assert [f for f in failed if not f.endswith("/favicon.ico")] == []
    assert [e for e in page.console_errors if not e.startswith("Failed to load resource")] == []


def test_the_page_refuses_an_empty_file_before_sending(
    page: object, login: object, live_server: object, operator: object, store: Path, tmp_path
) -> None:
    empty = tmp_path / "empty.onnx"
    empty.write_bytes(b"")
    login(page, "olivia", "pw-olivia-123")
    page.goto(f"{live_server.url}/models/upload/")
    page.set_input_files("#file-input", str(empty))
    page.fill("#name-input", "detector")
    page.fill("#label-input", "v1")
    page.click("#upload-button")
    page.wait_for_selector("#upload-error:not([hidden])")
    assert "empty" in page.inner_text("#upload-error")
