"""Django settings for a CVAT v2.73.0 server run without Docker on 127.0.0.1 (installed as docs/cvat.md says).

CVAT's own `cvat.settings.base` plus what Docker and `cvat.settings.development` would set; upstream's development
settings need silk and django-extensions, which the server's requirements do not install. No CVAT file is changed.
"""

import os

import attr
import datumaro as dm
import datumaro.components.annotation as dm_annotation


def _datumaro_compat() -> None:
    """PyPI's datumaro 1.11 lacks the skeleton type of CVAT's datumaro fork; CVAT only names it at import time
    (quality_control), and nothing the interactor uses needs more than the name."""
    kind = dm_annotation.AnnotationType
    if "skeleton" in kind.__members__:
        return
    member = int.__new__(kind, 17)
    member._name_, member._value_ = "skeleton", 17
    type.__setattr__(kind, "skeleton", member)
    kind._member_map_["skeleton"] = member
    kind._value2member_map_[17] = member
    kind._member_names_.append("skeleton")

    @attr.s(slots=True, order=False)
    class Skeleton(dm_annotation.Annotation):
        _type = kind.skeleton
        elements = attr.ib(factory=list)

        def get_bbox(self):
            boxes = [e.get_bbox() for e in self.elements]
            if not boxes:
                return [0, 0, 0, 0]
            x0 = min(b[0] for b in boxes)
            y0 = min(b[1] for b in boxes)
            x1 = max(b[0] + b[2] for b in boxes)
            y1 = max(b[1] + b[3] for b in boxes)
            return [x0, y0, x1 - x0, y1 - y0]

    dm_annotation.Skeleton = Skeleton
    dm.Skeleton = Skeleton


_datumaro_compat()

from cvat.settings.base import *  # noqa: E402,F403

DEBUG = os.environ.get("CVAT_DEBUG", "1") == "1"
ALLOWED_HOSTS = ["localhost", "127.0.0.1", "testserver"]
SMOKESCREEN_ENABLED = False
SENDFILE_BACKEND = "django_sendfile.backends.development"

IAM_OPA_URL = "http://127.0.0.1:{}".format(os.environ.get("CVAT_OPA_PORT", "8181"))
IAM_OPA_DATA_URL = f"{IAM_OPA_URL}/v1/data"
DATABASES["default"]["HOST"] = os.environ.get("CVAT_POSTGRES_HOST", "127.0.0.1")  # noqa: F405

# The React UI's dev server (yarn start:cvat-ui) on :3000 proxies /api here; it needs development's CORS/CSRF.
_ui = "http://{}:{}".format(os.environ.get("CVAT_UI_HOST", "localhost"), os.environ.get("CVAT_UI_PORT", "3000"))
UI_URL = _ui
CORS_ALLOW_CREDENTIALS = True
CORS_ORIGIN_WHITELIST = [_ui, _ui.replace("localhost", "127.0.0.1")]
CORS_REPLACE_HTTPS_REFERER = True
CSRF_TRUSTED_ORIGINS = list(CORS_ORIGIN_WHITELIST)
ACCOUNT_EMAIL_CONFIRMATION_ANONYMOUS_REDIRECT_URL = f"{_ui}/auth/email-confirmation"
ACCOUNT_EMAIL_VERIFICATION_SENT_REDIRECT_URL = f"{_ui}/auth/email-verification-sent"
INCORRECT_EMAIL_CONFIRMATION_URL = f"{_ui}/auth/incorrect-email-confirmation"
