#!/usr/bin/python
# Copyright: deepseek.cluster contributors
# Apache License 2.0 (see LICENSE)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: golden_prompts
short_description: Ask a Triton server fixed prompts with greedy decoding and compare the answers with a record
version_added: "0.1.0"
description:
  - Golden-prompt equivalence for disaster recovery. Sends each prompt of O(prompts), in order, to one Triton
    server's generate endpoint (C(POST <url>/v2/models/<model>/generate), Triton's generate extension) with
    greedy decoding and a fixed length, and returns the answers, the sha256 of each and a digest of them all.
  - The request is the input contract of TensorRT-LLM's C(llmapi) model (which serves DeepSeek-V3/R1), the
    same input names as the inference probe and the conformance suite use
    (C(text_input), C(sampling_param_max_tokens), C(sampling_param_temperature=0.0),
    C(sampling_param_top_k=1), C(sampling_param_exclude_input_from_output=true), C(streaming=false)). Not
    streaming, a decoupled model sends exactly one response, which is what C(generate) requires.
  - The answers are the generated text alone, without the prompt.
  - With O(expected) (prompt to answer, as recorded on the primary site) the answers are compared with the
    record and C(mismatches) and C(equal) are returned; by default a difference fails the task.
  - Only reads; C(changed) is always false, and check mode asks the same prompts.
  - Uses only the Python standard library on the managed host.
author:
  - deepseek.cluster maintainers (@deepseek-cluster)
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
attributes:
  check_mode:
    support: full
    details: Only reads; the prompts are asked in check mode too.
  diff_mode:
    support: none
    details: Changes nothing, so there is no difference to show.
  platform:
    platforms: posix
options:
  url:
    description:
      - Base URL of one Triton server's HTTP endpoint, for example C(http://10.0.0.5:8000), or of the
        mutual-TLS proxy, for example C(https://proxy.example.com:8443).
      - The module runs where the task runs; delegate to a host that can reach the URL.
    type: str
    required: true
  model:
    description:
      - Name of the served model.
    type: str
    default: deepseek
  prompts:
    description:
      - The golden prompts, asked in this order. Each must be a non-empty string, and no prompt may repeat.
      - The order is part of the digest.
    type: list
    elements: str
    required: true
  max_tokens:
    description:
      - Tokens generated for each prompt (C(sampling_param_max_tokens)). The record and the check must use
        the same value.
    type: int
    default: 32
  headers:
    description:
      - Extra HTTP headers sent with every request, for example the header of Triton's restricted APIs when
        the inference API is restricted, or the proxy's node header (C(deepseek-node)) to pin one node.
      - C(Content-Type) and C(Accept) are always C(application/json).
      - The values are not logged. Ansible hides them wherever they appear in the result, answers included.
    type: dict
    default: {}
  timeout:
    description:
      - Seconds to wait for each answer (connection and reading).
    type: float
    default: 60
  expected:
    description:
      - The recorded answers, prompt to answer. When given, C(mismatches) and C(equal) are returned.
      - A prompt without a recorded answer, and a recorded prompt that is not in O(prompts), count as mismatches.
    type: dict
  fail_on_mismatch:
    description:
      - Fail the task when O(expected) is given and any answer differs. The message names the first
        mismatching prompt; the result still carries C(answers), C(mismatches) and C(equal).
    type: bool
    default: true
  ca_path:
    description:
      - PEM bundle of the CA that signed the server's (the proxy's) certificate, for C(https://) URLs.
        Without it the system's trust store is used.
    type: path
  client_cert:
    description:
      - PEM client certificate presented to the mutual-TLS proxy (may hold the key as well).
    type: path
  client_key:
    description:
      - PEM private key of O(client_cert), when it is a file of its own.
    type: path
  validate_certs:
    description:
      - Verify the server's certificate and host name. Only for tests; TLS 1.3 is required either way.
    type: bool
    default: true
notes:
  - HTTPS connections require TLS 1.3, as the mutual-TLS proxy does.
  - Proxy settings of the environment (C(http_proxy), C(https_proxy)) are not used; requests go straight to O(url).
  - An HTTP error, a timeout or an answer without C(text_output) fails the task with a message naming the prompt,
    the URL, the HTTP status and the start of the body (Triton's C(error) message when it sends one).
  - The digest is the sha256 of the canonical JSON of the ordered list of C({"answer", "prompt"}) objects
    (UTF-8, keys sorted, no whitespace, non-ASCII characters unescaped).
seealso:
  - name: Golden-prompt equivalence
    description: Where the answers are recorded and how the failover check uses them (docs/golden-prompts.md).
    link: https://github.com/deepseek-cluster/deepseek.cluster/blob/main/docs/golden-prompts.md
  - name: Triton generate extension
    description: The generate endpoint's request and response objects.
    link: https://docs.nvidia.com/deeplearning/triton-inference-server/user-guide/docs/protocol/extension_generate.html
"""

EXAMPLES = r"""
- name: Record the golden answers on the primary site after a deploy
  deepseek.cluster.golden_prompts:
    url: "http://{{ ansible_host }}:8000"
    prompts: "{{ deepseek_golden_prompts }}"
    max_tokens: 32
  register: golden

- name: Keep them where dr_replication copies them to the standby
  ansible.builtin.copy:
    dest: /var/lib/deepseek/golden/answers.json
    content: "{{ {'model': 'deepseek', 'max_tokens': 32, 'digest': golden.digest,
                  'answers': golden.answers} | to_nice_json }}"
    mode: "0644"

- name: Read the replicated record on a standby node
  ansible.builtin.slurp:
    src: /var/lib/deepseek/golden/answers.json
  register: golden_record

- name: The standby must give the same answers before it counts as ready
  deepseek.cluster.golden_prompts:
    url: "http://{{ ansible_host }}:8000"
    prompts: "{{ (golden_record.content | b64decode | from_json).answers | map(attribute='prompt') }}"
    max_tokens: "{{ (golden_record.content | b64decode | from_json).max_tokens }}"
    expected: "{{ (golden_record.content | b64decode | from_json).answers
                  | items2dict(key_name='prompt', value_name='answer') }}"

- name: Through the mutual-TLS proxy, pinned to one node, reporting instead of failing
  deepseek.cluster.golden_prompts:
    url: https://proxy1.standby.example.com:8443
    prompts:
      - "Answer with one word: what colour is the sky on a clear day?"
      - "Count from one to five."
    ca_path: /etc/deepseek/pki/ca.crt
    client_cert: /etc/deepseek/pki/probe.crt
    client_key: /etc/deepseek/pki/probe.key
    headers:
      deepseek-node: gpu1
    expected: "{{ golden_expected }}"
    fail_on_mismatch: false
  register: standby_golden
"""

RETURN = r"""
answers:
  description: Each prompt's answer (the generated text alone), in the order of O(prompts).
  returned: success, and on a mismatch
  type: list
  elements: dict
  contains:
    prompt:
      description: The prompt.
      type: str
      returned: always
    answer:
      description: The greedy answer (C(text_output)).
      type: str
      returned: always
    sha256:
      description: sha256 of the answer's UTF-8 bytes.
      type: str
      returned: always
  sample:
    - prompt: "Answer with one word: what colour is the sky on a clear day?"
      answer: " Blue."
      sha256: 3d4e6d1c1e0b2f4f5a1e6f1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f
digest:
  description:
    - sha256 of the canonical JSON of the ordered prompt/answer pairs (see notes). Equal digests mean the same
      prompts, in the same order, with the same answers.
  returned: success, and on a mismatch
  type: str
  sample: 9f2c1a0e5b7d3c4a1e2f3a4b5c6d7e8f9a0b1c2d3e4f5a6b7c8d9e0f1a2b3c4d
request:
  description: The inputs sent with every prompt besides C(text_input).
  returned: success, and on a mismatch
  type: dict
  sample:
    sampling_param_max_tokens: 32
    sampling_param_temperature: 0.0
    sampling_param_top_k: 1
    sampling_param_exclude_input_from_output: true
    streaming: false
mismatches:
  description:
    - The prompts whose answer differs from O(expected), in prompt order, then the recorded prompts that were
      not asked. C(expected) is null for a prompt without a recorded answer, C(got) for a prompt not asked.
  returned: when O(expected) is given
  type: list
  elements: dict
  contains:
    prompt:
      description: The prompt.
      type: str
      returned: always
    expected:
      description: The recorded answer.
      type: str
      returned: always
    got:
      description: The answer now.
      type: str
      returned: always
  sample:
    - prompt: "Count from one to five."
      expected: " One, two, three, four, five."
      got: " 1, 2, 3, 4, 5."
equal:
  description: Whether every answer equals its recorded one and both cover the same prompts.
  returned: when O(expected) is given
  type: bool
  sample: true
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.deepseek.cluster.plugins.module_utils.golden_prompts import (
    GoldenError,
    golden_check,
    mismatch_message,
)

ARGUMENT_SPEC = {
    "url": {"type": "str", "required": True},
    "model": {"type": "str", "default": "deepseek"},
    "prompts": {"type": "list", "elements": "str", "required": True},
    "max_tokens": {"type": "int", "default": 32, "no_log": False},
    "headers": {"type": "dict", "default": {}, "no_log": True},
    "timeout": {"type": "float", "default": 60},
    "expected": {"type": "dict"},
    "fail_on_mismatch": {"type": "bool", "default": True},
    "ca_path": {"type": "path"},
    "client_cert": {"type": "path"},
    "client_key": {"type": "path", "no_log": False},
    "validate_certs": {"type": "bool", "default": True},
}


def main() -> None:
    """Ask the prompts, compare with the record when given; never changes anything."""
    module = AnsibleModule(
        argument_spec=ARGUMENT_SPEC,
        required_by={"client_key": "client_cert"},
        supports_check_mode=True,
    )
    params = dict(module.params)
    params["headers"] = {str(k): str(v) for k, v in (params["headers"] or {}).items()}
    expected = params["expected"]
    if expected is not None and not all(isinstance(v, str) for v in expected.values()):
        module.fail_json(msg="expected must map each prompt to its answer, a string", changed=False)
    try:
        result = golden_check(params)
    except (GoldenError, ValueError) as exc:
        module.fail_json(msg=str(exc), changed=False)
    if expected is not None and not result["equal"] and params["fail_on_mismatch"]:
        compared = len(result["answers"]) + sum(1 for m in result["mismatches"] if m["got"] is None)
        module.fail_json(msg=mismatch_message(result["mismatches"], compared), changed=False, **result)
    module.exit_json(changed=False, **result)


if __name__ == "__main__":
    main()
