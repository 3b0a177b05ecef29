"""Field numbers of the k8s.io/api and apimachinery ``generated.proto``
messages that kubectl sends as request bodies (create configmap, secret,
namespace, serviceaccount, deployment, token, auth whoami / can-i).

Each message maps field number -> (json name, type, flags). Types: ``s``
string, ``i`` varint integer, ``b`` bool, ``y`` bytes (base64 in JSON),
``time`` meta.v1.Time, ``q`` resource.Quantity, ``ios`` IntOrString,
``map_ss`` map<string,string>, ``map_sy`` map<string,bytes>, ``map_sq``
map<string,Quantity>, or another message name. Flags: ``r`` repeated,
``p`` pointer (keep zero values, which JSON would otherwise omit).
"""

from __future__ import annotations

Field = tuple[str, str, str]

SCHEMAS: dict[str, dict[int, Field]] = {
    "ObjectMeta": {
        1: ("name", "s", ""), 2: ("generateName", "s", ""), 3: ("namespace", "s", ""),
        4: ("selfLink", "s", ""), 5: ("uid", "s", ""), 6: ("resourceVersion", "s", ""),
        7: ("generation", "i", ""), 8: ("creationTimestamp", "time", ""),
        9: ("deletionTimestamp", "time", ""), 10: ("deletionGracePeriodSeconds", "i", "p"),
        11: ("labels", "map_ss", ""), 12: ("annotations", "map_ss", ""),
        13: ("ownerReferences", "OwnerReference", "r"), 14: ("finalizers", "s", "r"),
    },
    "OwnerReference": {
        1: ("kind", "s", ""), 3: ("name", "s", ""), 4: ("uid", "s", ""), 5: ("apiVersion", "s", ""),
        6: ("controller", "b", "p"), 7: ("blockOwnerDeletion", "b", "p"),
    },
    "ObjectReference": {
        1: ("kind", "s", ""), 2: ("namespace", "s", ""), 3: ("name", "s", ""), 4: ("uid", "s", ""),
        5: ("apiVersion", "s", ""), 6: ("resourceVersion", "s", ""), 7: ("fieldPath", "s", ""),
    },
    "LocalObjectReference": {1: ("name", "s", "")},
    "ConfigMap": {
        1: ("metadata", "ObjectMeta", ""), 2: ("data", "map_ss", ""), 3: ("binaryData", "map_sy", ""),
        4: ("immutable", "b", "p"),
    },
    "Secret": {
        1: ("metadata", "ObjectMeta", ""), 2: ("data", "map_sy", ""), 3: ("type", "s", ""),
        4: ("stringData", "map_ss", ""), 5: ("immutable", "b", "p"),
    },
    "Namespace": {1: ("metadata", "ObjectMeta", ""), 2: ("spec", "NamespaceSpec", ""),
                  3: ("status", "NamespaceStatus", "")},
    "NamespaceSpec": {1: ("finalizers", "s", "r")},
    "NamespaceStatus": {1: ("phase", "s", "")},
    "ServiceAccount": {
        1: ("metadata", "ObjectMeta", ""), 2: ("secrets", "ObjectReference", "r"),
        3: ("imagePullSecrets", "LocalObjectReference", "r"), 4: ("automountServiceAccountToken", "b", "p"),
    },
    "TokenRequest": {1: ("metadata", "ObjectMeta", ""), 2: ("spec", "TokenRequestSpec", ""),
                     3: ("status", "TokenRequestStatus", "")},
    "TokenRequestSpec": {1: ("audiences", "s", "r"), 3: ("boundObjectRef", "BoundObjectReference", ""),
                         4: ("expirationSeconds", "i", "p")},
    "BoundObjectReference": {1: ("kind", "s", ""), 2: ("apiVersion", "s", ""), 3: ("name", "s", ""),
                             4: ("uid", "s", "")},
    "TokenRequestStatus": {1: ("token", "s", ""), 2: ("expirationTimestamp", "time", "")},
    "SelfSubjectReview": {1: ("metadata", "ObjectMeta", ""), 2: ("status", "SelfSubjectReviewStatus", "")},
    "SelfSubjectReviewStatus": {1: ("userInfo", "UserInfo", "")},
    "UserInfo": {1: ("username", "s", ""), 2: ("uid", "s", ""), 3: ("groups", "s", "r")},
    "SelfSubjectAccessReview": {1: ("metadata", "ObjectMeta", ""), 2: ("spec", "SelfSubjectAccessReviewSpec", ""),
                                3: ("status", "SubjectAccessReviewStatus", "")},
    "SelfSubjectAccessReviewSpec": {1: ("resourceAttributes", "ResourceAttributes", ""),
                                    2: ("nonResourceAttributes", "NonResourceAttributes", "")},
    "ResourceAttributes": {1: ("namespace", "s", ""), 2: ("verb", "s", ""), 3: ("group", "s", ""),
                           4: ("version", "s", ""), 5: ("resource", "s", ""), 6: ("subresource", "s", ""),
                           7: ("name", "s", "")},
    "NonResourceAttributes": {1: ("path", "s", ""), 2: ("verb", "s", "")},
    "SubjectAccessReviewStatus": {1: ("allowed", "b", ""), 2: ("reason", "s", ""),
                                  3: ("evaluationError", "s", ""), 4: ("denied", "b", "")},
    "SelfSubjectRulesReview": {1: ("metadata", "ObjectMeta", ""), 2: ("spec", "SelfSubjectRulesReviewSpec", "")},
    "SelfSubjectRulesReviewSpec": {1: ("namespace", "s", "")},
    "Deployment": {1: ("metadata", "ObjectMeta", ""), 2: ("spec", "DeploymentSpec", ""),
                   3: ("status", "DeploymentStatus", "")},
    "DeploymentSpec": {
        1: ("replicas", "i", "p"), 2: ("selector", "LabelSelector", ""), 3: ("template", "PodTemplateSpec", ""),
        4: ("strategy", "DeploymentStrategy", ""), 5: ("minReadySeconds", "i", ""),
        6: ("revisionHistoryLimit", "i", "p"), 7: ("paused", "b", ""), 9: ("progressDeadlineSeconds", "i", "p"),
    },
    "DeploymentStatus": {1: ("observedGeneration", "i", ""), 2: ("replicas", "i", "")},
    "DeploymentStrategy": {1: ("type", "s", ""), 2: ("rollingUpdate", "RollingUpdateDeployment", "")},
    "RollingUpdateDeployment": {1: ("maxUnavailable", "ios", ""), 2: ("maxSurge", "ios", "")},
    "LabelSelector": {1: ("matchLabels", "map_ss", ""), 2: ("matchExpressions", "LabelSelectorRequirement", "r")},
    "LabelSelectorRequirement": {1: ("key", "s", ""), 2: ("operator", "s", ""), 3: ("values", "s", "r")},
    "PodTemplateSpec": {1: ("metadata", "ObjectMeta", ""), 2: ("spec", "PodSpec", "")},
    "PodSpec": {
        1: ("volumes", "Volume", "r"), 2: ("containers", "Container", "r"), 3: ("restartPolicy", "s", ""),
        4: ("terminationGracePeriodSeconds", "i", "p"), 5: ("activeDeadlineSeconds", "i", "p"),
        6: ("dnsPolicy", "s", ""), 7: ("nodeSelector", "map_ss", ""), 8: ("serviceAccountName", "s", ""),
        9: ("serviceAccount", "s", ""), 10: ("nodeName", "s", ""), 11: ("hostNetwork", "b", ""),
        12: ("hostPID", "b", ""), 13: ("hostIPC", "b", ""), 14: ("securityContext", "Empty", ""),
        15: ("imagePullSecrets", "LocalObjectReference", "r"), 16: ("hostname", "s", ""),
        17: ("subdomain", "s", ""), 19: ("schedulerName", "s", ""), 20: ("initContainers", "Container", "r"),
        21: ("automountServiceAccountToken", "b", "p"),
    },
    "Empty": {},
    "Volume": {1: ("name", "s", "")},
    "Container": {
        1: ("name", "s", ""), 2: ("image", "s", ""), 3: ("command", "s", "r"), 4: ("args", "s", "r"),
        5: ("workingDir", "s", ""), 6: ("ports", "ContainerPort", "r"), 7: ("env", "EnvVar", "r"),
        8: ("resources", "ResourceRequirements", ""), 9: ("volumeMounts", "VolumeMount", "r"),
        13: ("terminationMessagePath", "s", ""), 14: ("imagePullPolicy", "s", ""),
        16: ("stdin", "b", ""), 17: ("stdinOnce", "b", ""), 18: ("tty", "b", ""),
        20: ("terminationMessagePolicy", "s", ""),
    },
    "ContainerPort": {1: ("name", "s", ""), 2: ("hostPort", "i", ""), 3: ("containerPort", "i", ""),
                      4: ("protocol", "s", ""), 5: ("hostIP", "s", "")},
    "EnvVar": {1: ("name", "s", ""), 2: ("value", "s", "")},
    "ResourceRequirements": {1: ("limits", "map_sq", ""), 2: ("requests", "map_sq", "")},
    "VolumeMount": {1: ("name", "s", ""), 2: ("readOnly", "b", ""), 3: ("mountPath", "s", ""),
                    4: ("subPath", "s", "")},
    "Pod": {1: ("metadata", "ObjectMeta", ""), 2: ("spec", "PodSpec", ""), 3: ("status", "Empty", "")},
    "Service": {1: ("metadata", "ObjectMeta", ""), 2: ("spec", "ServiceSpec", ""), 3: ("status", "Empty", "")},
    "ServiceSpec": {
        1: ("ports", "ServicePort", "r"), 2: ("selector", "map_ss", ""), 3: ("clusterIP", "s", ""),
        4: ("type", "s", ""), 5: ("externalIPs", "s", "r"), 7: ("sessionAffinity", "s", ""),
        8: ("loadBalancerIP", "s", ""), 10: ("externalName", "s", ""), 11: ("externalTrafficPolicy", "s", ""),
        13: ("publishNotReadyAddresses", "b", ""), 17: ("ipFamilyPolicy", "s", ""), 18: ("clusterIPs", "s", "r"),
        19: ("ipFamilies", "s", "r"), 22: ("internalTrafficPolicy", "s", ""),
    },
    "ServicePort": {1: ("name", "s", ""), 2: ("protocol", "s", ""), 3: ("port", "i", ""),
                    4: ("targetPort", "ios", ""), 5: ("nodePort", "i", ""), 6: ("appProtocol", "s", "")},
    # rbac.authorization.k8s.io/v1
    "Role": {1: ("metadata", "ObjectMeta", ""), 2: ("rules", "PolicyRule", "r")},
    "ClusterRole": {1: ("metadata", "ObjectMeta", ""), 2: ("rules", "PolicyRule", "r")},
    "PolicyRule": {1: ("verbs", "s", "r"), 2: ("apiGroups", "s", "r"), 3: ("resources", "s", "r"),
                   4: ("resourceNames", "s", "r"), 5: ("nonResourceURLs", "s", "r")},
    "RoleBinding": {1: ("metadata", "ObjectMeta", ""), 2: ("subjects", "Subject", "r"), 3: ("roleRef", "RoleRef", "")},
    "ClusterRoleBinding": {1: ("metadata", "ObjectMeta", ""), 2: ("subjects", "Subject", "r"),
                           3: ("roleRef", "RoleRef", "")},
    "Subject": {1: ("kind", "s", ""), 2: ("apiGroup", "s", ""), 3: ("name", "s", ""), 4: ("namespace", "s", "")},
    "RoleRef": {1: ("apiGroup", "s", ""), 2: ("kind", "s", ""), 3: ("name", "s", "")},
}

# Top-level kinds whose protobuf bodies the server decodes.
DECODABLE_KINDS = frozenset({
    "ConfigMap", "Secret", "Namespace", "ServiceAccount", "TokenRequest", "SelfSubjectReview",
    "SelfSubjectAccessReview", "SelfSubjectRulesReview", "Deployment", "Pod", "Service", "Role", "ClusterRole",
    "RoleBinding", "ClusterRoleBinding",
})
