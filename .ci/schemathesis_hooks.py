"""Schemathesis hooks for .ci/openapi-check (loaded through SCHEMATHESIS_HOOKS).

The install manifest (GET /api/v1/clusters/{id}/install.yaml) is a stream of YAML documents.
Schemathesis reads YAML bodies as one document and its worker crashes on a stream, which
would silently end the run early; read every document instead.
"""

import schemathesis
import yaml
from schemathesis.core import media_types


@schemathesis.deserializer(*media_types.YAML_MEDIA_TYPES)
def yaml_stream(_ctx, response):
    return list(yaml.safe_load_all(response.content.decode(response.encoding or "utf-8")))
