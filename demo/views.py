from django.contrib import messages
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect
from django.views.decorators.http import require_POST

from accounts.audit import record
from accounts.roles import operator_required
from demo import story


@operator_required
@require_POST
def restart(request: HttpRequest) -> HttpResponse:
    """Ask the running demo to replay its story; the demo process picks the request up."""
    story.request_restart()
    record("demo.restart", "demo", request=request)
    messages.success(request, "The demo will replay its story in a few seconds.")
    return redirect("overview")
