"""JSON schemas for the KEDA objects the manifests use, written from KEDA's docs (keda.sh, v2).

kubernetes-validate ships Kubernetes' own schemas, not those of custom resources, so
``ScaledObject`` and ``TriggerAuthentication`` are checked against these. They are stricter
than KEDA's CRDs: they allow only the fields these manifests may use (an unknown field is a
typo here, where KEDA's CRD would silently keep it), and a Kafka trigger's ``metadata`` only
the Kafka scaler's documented parameters, each a string, as KEDA's ``map[string]string`` needs.
"""

from __future__ import annotations

from typing import Any

#: The Kafka scaler's documented trigger parameters (keda.sh/docs/2.x/scalers/apache-kafka).
KAFKA_TRIGGER_PARAMETERS = (
    "bootstrapServers",
    "consumerGroup",
    "topic",
    "partitionLimitation",
    "lagThreshold",
    "activationLagThreshold",
    "offsetResetPolicy",
    "allowIdleConsumers",
    "excludePersistentLag",
    "scaleToZeroOnInvalidOffset",
    "limitToPartitionsWithLag",
    "ensureEvenDistributionOfPartitions",
    "version",
    "sasl",
    "tls",
    "unsafeSsl",
)

_STRING = {"type": "string", "minLength": 1}
_INT_STRING = {"type": "string", "pattern": r"^[0-9]+$"}
_BOOL_STRING = {"type": "string", "enum": ["true", "false"]}

_METADATA = {
    "type": "object",
    "required": ["name"],
    "properties": {
        "name": _STRING,
        "namespace": _STRING,
        "labels": {"type": "object", "additionalProperties": {"type": "string"}},
        "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
    },
    "additionalProperties": False,
}

_KAFKA_METADATA = {
    "type": "object",
    "required": ["bootstrapServers", "consumerGroup", "topic", "lagThreshold"],
    "properties": {
        **{name: _STRING for name in KAFKA_TRIGGER_PARAMETERS},
        "lagThreshold": _INT_STRING,
        "activationLagThreshold": _INT_STRING,
        "offsetResetPolicy": {"type": "string", "enum": ["earliest", "latest"]},
        "allowIdleConsumers": _BOOL_STRING,
        "excludePersistentLag": _BOOL_STRING,
        "scaleToZeroOnInvalidOffset": _BOOL_STRING,
        "limitToPartitionsWithLag": _BOOL_STRING,
    },
    "additionalProperties": False,
}

SCALED_OBJECT: dict[str, Any] = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "keda.sh/v1alpha1"},
        "kind": {"const": "ScaledObject"},
        "metadata": _METADATA,
        "spec": {
            "type": "object",
            "required": ["scaleTargetRef", "triggers"],
            "properties": {
                "scaleTargetRef": {
                    "type": "object",
                    "required": ["name"],
                    "properties": {
                        "name": _STRING,
                        "apiVersion": _STRING,
                        "kind": _STRING,
                        "envSourceContainerName": _STRING,
                    },
                    "additionalProperties": False,
                },
                "pollingInterval": {"type": "integer", "minimum": 1},
                "cooldownPeriod": {"type": "integer", "minimum": 0},
                "initialCooldownPeriod": {"type": "integer", "minimum": 0},
                "idleReplicaCount": {"type": "integer", "minimum": 0},
                "minReplicaCount": {"type": "integer", "minimum": 0},
                "maxReplicaCount": {"type": "integer", "minimum": 1},
                "advanced": {
                    "type": "object",
                    "properties": {
                        "restoreToOriginalReplicaCount": {"type": "boolean"},
                        # Its `behavior` is an HPA's: the test validates it as part of one.
                        "horizontalPodAutoscalerConfig": {
                            "type": "object",
                            "properties": {"name": _STRING, "behavior": {"type": "object"}},
                            "additionalProperties": False,
                        },
                    },
                    "additionalProperties": False,
                },
                "triggers": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "required": ["type", "metadata"],
                        "properties": {
                            "type": {"const": "kafka"},  # the only scaler these manifests use
                            "name": _STRING,
                            "metadata": _KAFKA_METADATA,
                            "authenticationRef": {
                                "type": "object",
                                "required": ["name"],
                                "properties": {
                                    "name": _STRING,
                                    "kind": {
                                        "enum": ["TriggerAuthentication", "ClusterTriggerAuthentication"]
                                    },
                                },
                                "additionalProperties": False,
                            },
                            "metricType": {"enum": ["AverageValue", "Value", "Utilization"]},
                            "useCachedMetrics": {"type": "boolean"},
                        },
                        "additionalProperties": False,
                    },
                },
            },
            "additionalProperties": False,
        },
    },
    "additionalProperties": False,
}

#: The Kafka scaler's authentication parameters (sasl, username, password, tls, ca, cert, key, ...).
KAFKA_AUTH_PARAMETERS = ("sasl", "username", "password", "tls", "ca", "cert", "key", "keyPassword")

TRIGGER_AUTHENTICATION: dict[str, Any] = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "keda.sh/v1alpha1"},
        "kind": {"const": "TriggerAuthentication"},
        "metadata": _METADATA,
        "spec": {
            "type": "object",
            "properties": {
                "secretTargetRef": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "required": ["parameter", "name", "key"],
                        "properties": {
                            "parameter": {"enum": list(KAFKA_AUTH_PARAMETERS)},
                            "name": _STRING,
                            "key": _STRING,
                        },
                        "additionalProperties": False,
                    },
                },
            },
            "additionalProperties": False,
        },
    },
    "additionalProperties": False,
}

SCHEMAS = {"ScaledObject": SCALED_OBJECT, "TriggerAuthentication": TRIGGER_AUTHENTICATION}
