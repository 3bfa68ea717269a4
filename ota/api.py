"""Operator JSON API of the registry: a training pipeline pushes a version and polls its status."""

from django.http import HttpRequest, JsonResponse
from ninja import Router

from accounts.auth import OperatorToken
from ota import aliases, lineage, services
from ota.uploads import read_upload, truthy

router = Router(tags=["registry"])

UPLOAD_SCHEMA = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file", "label"],
                    "properties": {
                        "file": {"type": "string", "format": "binary", "description": "the .onnx model"},
                        "label": {"type": "string", "pattern": services.LABEL_RE.pattern},
                        "notes": {"type": "string", "maxLength": services.MAX_NOTES},
                        "reference": {"type": "string", "format": "binary", "description": ".npz or .csv"},
                        "int8": {
                            "type": "boolean",
                            "description": "also make the compressed variants (int8, static int8, fp16, optimised)",
                        },
                        "lineage": {
                            "type": "string",
                            "maxLength": lineage.MAX_BYTES,
                            "description": 'JSON: {"meta": {"git_commit": "abc", "metrics": {"auc": 0.93}}, '
                            '"links": {"run": "https://…"}} (bounded; see docs/api.md)',
                        },
                    },
                }
            }
        },
    }
}


def error(exc: services.RegistryError) -> JsonResponse:
    return JsonResponse(exc.as_json(), status=exc.status)


@router.post(
    "/models/{name}/versions",
    auth=OperatorToken(),
    url_name="ota_version_create",
    openapi_extra=UPLOAD_SCHEMA,
    summary="Upload a model version (multipart); validation runs in the background",
)
def upload_version(request: HttpRequest, name: str) -> JsonResponse:
    try:
        post, files = read_upload(request)
        version = services.create_version(
            name=name,
            label=post.get("label", ""),
            notes=post.get("notes", ""),
            upload=files.get("file"),
            reference=files.get("reference"),
            want_int8=truthy(post.get("int8")),
            lineage=post.get("lineage", ""),
            request=request,
        )
    except services.RegistryError as exc:
        return error(exc)
    return JsonResponse(services.version_json(version), status=201)


@router.get(
    "/models/{name}/versions/{label}",
    auth=OperatorToken(),
    url_name="ota_version",
    summary="A version's status, validation report, reference profile and variants",
)
def get_version(request: HttpRequest, name: str, label: str) -> JsonResponse:
    version = aliases.resolve(name, label)  # a label, or "@production"
    if version is None:
        return error(services.RegistryError("not_found", f"Model '{name}' has no version '{label}'.", None, 404))
    return JsonResponse(services.version_json(version))
