// @ts-check
// The "Create a task" forms, built from each executor's JSON schema.

import { ApiError, api } from "./api.js";
import { renderList, revealTask, upsert } from "./cards.js";
import { $, el, messageOf, toast, withCode } from "./dom.js";
import { live, markDirty, tasks } from "./state.js";

/** A JSON schema, as the server publishes an executor's params. @typedef {Record<string, any>} Schema */
/**
 * One field of a form.
 * @typedef {object} FieldSpec
 * @property {string} name
 * @property {string} kind "integer", "number", "string", "boolean", "enum", "lines" or "json"
 * @property {boolean} required
 * @property {boolean} nullable
 * @property {Schema} schema
 * @property {boolean} [textItems]
 * @property {boolean} [option]
 */
/** @typedef {HTMLInputElement | HTMLSelectElement | HTMLTextAreaElement} FieldInput */

/**
 * @param {Schema | undefined} schema
 * @param {Schema} root
 * @returns {Schema}
 */
function resolveRef(schema, root) {
  let current = schema ?? {};
  for (let hops = 0; current && current.$ref && hops < 20; hops += 1) {
    const name = current.$ref.replace(/^#\/\$defs\//, "");
    const { $ref, ...rest } = current;
    current = { ...(root.$defs?.[name] ?? {}), ...rest };
  }
  return current ?? {};
}

/**
 * A field description {name, kind, required, nullable, schema} for one property.
 * @param {string} name
 * @param {Schema} property
 * @param {Schema} root
 * @param {boolean} required
 * @returns {FieldSpec}
 */
function fieldSpec(name, property, root, required) {
  let schema = resolveRef(property, root);
  let nullable = false;
  const options = schema.anyOf ?? schema.oneOf;
  if (Array.isArray(options)) {
    const resolved = options.map((/** @type {Schema} */ o) => resolveRef(o, root));
    const nonNull = resolved.filter((/** @type {Schema} */ o) => o.type !== "null");
    nullable = nonNull.length < resolved.length;
    const outer = { description: schema.description, default: schema.default, title: schema.title };
    schema = nonNull.length === 1 ? { ...nonNull[0], ...strip(outer) } : { ...strip(outer), _mixed: true };
  }
  if (Array.isArray(schema.type)) {
    const types = schema.type.filter((/** @type {string} */ t) => t !== "null");
    nullable = nullable || types.length < schema.type.length;
    schema = { ...schema, type: types.length === 1 ? types[0] : undefined };
  }
  let kind = "json";
  if (Array.isArray(schema.enum)) kind = "enum";
  else if (schema.type === "boolean") kind = "boolean";
  else if (schema.type === "integer") kind = "integer";
  else if (schema.type === "number") kind = "number";
  else if (schema.type === "string") kind = "string";
  let textItems = false;
  if (schema.type === "array") {
    const items = schema.items ? resolveRef(schema.items, root) : {};
    kind = !items.type || items.type === "string" ? "lines" : "json";
    textItems = items.type === "string";
  }
  return { name, kind, required, nullable, schema, textItems };
}

/**
 * One line of a "lines" field: a JSON value when it parses as one, else the text itself.
 * @param {string} line
 * @returns {unknown}
 */
function parseLine(line) {
  try {
    return JSON.parse(line);
  } catch {
    return line;
  }
}

/**
 * The line showing `value` (the inverse of `parseLine`): text as is, unless it would read as JSON.
 * @param {unknown} value
 */
function lineOf(value) {
  return typeof value === "string" && parseLine(value) === value ? value : JSON.stringify(value);
}

/**
 * The items of a "lines" field: one JSON array, or one item per line.
 * @param {string} text
 * @param {boolean | undefined} textItems
 * @returns {unknown[]}
 */
function readLines(text, textItems) {
  if (text.startsWith("[")) {
    try {
      const parsed = JSON.parse(text);
      if (Array.isArray(parsed)) return parsed;
    } catch { /* not JSON: one item per line */ }
  }
  // Unless the items are strings, a line that is JSON is that JSON value (so
  // {"fail": true} is an object, 7 a number) and any other line is text.
  const lines = text.split(/\r?\n/).map((line) => line.trim()).filter((line) => line !== "");
  return textItems ? lines : lines.map(parseLine);
}

/**
 * The text showing `values` in a "lines" field: a line each, or a JSON array when lines would read back otherwise.
 * @param {unknown[]} values
 * @param {boolean | undefined} textItems
 */
function linesOf(values, textItems) {
  const text = values.map(textItems ? String : lineOf).join("\n");
  return JSON.stringify(readLines(text, textItems)) === JSON.stringify(values) ? text : JSON.stringify(values);
}

/** @param {Record<string, unknown>} object */
function strip(object) {
  return Object.fromEntries(Object.entries(object).filter(([, v]) => v !== undefined));
}

/** @param {FieldSpec} spec */
function boundsHint(spec) {
  const s = spec.schema;
  const parts = [];
  if (spec.kind === "integer" || spec.kind === "number") {
    if (s.minimum !== undefined && s.maximum !== undefined) parts.push(`${s.minimum}–${s.maximum}`);
    else if (s.minimum !== undefined) parts.push(`≥ ${s.minimum}`);
    else if (s.maximum !== undefined) parts.push(`≤ ${s.maximum}`);
    if (s.exclusiveMinimum !== undefined) parts.push(`> ${s.exclusiveMinimum}`);
    if (s.exclusiveMaximum !== undefined) parts.push(`< ${s.exclusiveMaximum}`);
  }
  if (spec.kind === "string" && s.maxLength !== undefined) parts.push(`max ${s.maxLength} chars`);
  if (spec.kind === "lines") {
    if (s.minItems !== undefined) parts.push(`min ${s.minItems}`);
    if (s.maxItems !== undefined) parts.push(`max ${s.maxItems} items`);
  }
  if (s.default !== undefined && s.default !== null && spec.kind !== "boolean") {
    parts.push(`default ${typeof s.default === "object" ? JSON.stringify(s.default) : s.default}`);
  }
  return parts.join(" · ");
}

/**
 * @param {FieldSpec} spec
 * @param {string} id
 * @returns {FieldInput}
 */
function buildInput(spec, id) {
  const s = spec.schema;
  const common = { id, name: spec.name, "data-kind": spec.kind };
  switch (spec.kind) {
    case "integer":
    case "number":
      return el("input", {
        ...common, type: "number", inputmode: spec.kind === "integer" ? "numeric" : "decimal",
        step: spec.kind === "integer" ? "1" : "any",
        min: s.minimum ?? s.exclusiveMinimum, max: s.maximum ?? s.exclusiveMaximum,
        value: typeof s.default === "number" ? String(s.default) : undefined,
      });
    case "string":
      return el("input", {
        ...common, type: "text", maxlength: s.maxLength, autocomplete: "off",
        value: typeof s.default === "string" ? s.default : undefined,
        placeholder: Array.isArray(s.examples) && s.examples.length ? `e.g. ${s.examples[0]}` : undefined,
      });
    case "boolean":
      return el("input", { ...common, type: "checkbox", checked: s.default === true });
    case "enum": {
      const select = el("select", common);
      if (!spec.required && s.default === undefined) select.append(el("option", { value: "", text: "(default)" }));
      s.enum.forEach((/** @type {unknown} */ value, /** @type {number} */ index) => select.append(el("option", {
        value: String(index), text: value === null ? "null" : String(value), selected: value === s.default,
      })));
      return select;
    }
    case "lines":
      return el("textarea", {
        ...common, rows: "4", spellcheck: "false",
        placeholder: spec.textItems
          ? "one item per line, or a JSON array like [\"a\", \"b\"]"
          : "one item per line: JSON values like 7 or {\"fail\": true} are read as JSON, other lines as text",
        text: Array.isArray(s.default) ? linesOf(s.default, spec.textItems) : undefined,
      });
    default: {
      const value = s.default !== undefined && s.default !== null ? JSON.stringify(s.default, null, 2) : undefined;
      return el("textarea", {
        ...common, rows: "3", spellcheck: "false", placeholder: "JSON, e.g. {\"key\": \"value\"}", text: value,
      });
    }
  }
}

class FieldError extends Error {
  /**
   * @param {string} field
   * @param {string} message
   */
  constructor(field, message) {
    super(message);
    this.field = field;
  }
}

/**
 * The value of one field, or undefined to leave it out (the server's default applies).
 * @param {FieldSpec} spec
 * @param {FieldInput} input
 * @returns {unknown}
 */
function readField(spec, input) {
  const s = spec.schema;
  if (spec.kind === "boolean") return /** @type {HTMLInputElement} */ (input).checked;
  if (spec.kind === "enum") return input.value === "" ? undefined : s.enum[Number(input.value)];
  const raw = input.value;
  const text = spec.kind === "string" ? raw : raw.trim();
  if (text === "") {
    if (spec.kind === "string" && spec.required && !spec.nullable) return "";
    return undefined;
  }
  switch (spec.kind) {
    case "integer":
    case "number": {
      const n = Number(text);
      if (!Number.isFinite(n)) throw new FieldError(spec.name, `${spec.name}: enter a number.`);
      if (spec.kind === "integer" && !Number.isInteger(n)) throw new FieldError(spec.name, `${spec.name}: enter a whole number.`);
      return n;
    }
    case "string":
      return raw;
    case "lines":
      return readLines(text, spec.textItems);
    default:
      try {
        return JSON.parse(text);
      } catch {
        throw new FieldError(spec.name, `${spec.name}: not valid JSON.`);
      }
  }
}

/**
 * The form of one executor, in its tab panel.
 * @param {Record<string, any>} executor an item of GET /executors
 * @param {string} panelId
 * @param {string} tabId
 */
function buildForm(executor, panelId, tabId) {
  const root = executor.paramsSchema ?? {};
  const body = resolveRef(root, root);
  const required = new Set(body.required ?? []);
  /** @type {FieldSpec[]} */
  const specs = Object.entries(body.properties ?? {}).map(([name, prop]) => fieldSpec(name, prop, root, required.has(name)));
  const acceptsDescription = !("description" in (body.properties ?? {}));
  if (acceptsDescription) {
    specs.push({ name: "description", kind: "string", required: false, nullable: true, option: true,
      schema: { maxLength: 2000, description: "Optional task description (a task option, not a param)." } });
  }
  const form = el("form", { class: "exec-form", "data-executor": executor.name, novalidate: true });
  form.append(el("h3", { text: executor.title || executor.name }));
  if (executor.description) form.append(el("p", { class: "exec-desc" }, ...withCode(executor.description)));
  if (executor.steps?.length) {
    const steps = executor.steps.map((/** @type {{name: string}} */ step) => step.name).join(" → ");
    form.append(el("p", { class: "steps-line", text: `Steps: ${steps}` }));
  }
  const errorBox = el("p", { class: "form-error", role: "alert", hidden: true });
  /** @type {Map<string, {spec: FieldSpec, input: FieldInput}>} */
  const inputs = new Map();
  specs.forEach((spec, index) => {
    const id = `f-${executor.name.replace(/[^A-Za-z0-9_-]/g, "_")}-${index}`;
    const input = buildInput(spec, id);
    inputs.set(spec.name, { spec, input });
    const hint = boundsHint(spec);
    const label = el("label", { for: id },
      el("code", { text: spec.name }),
      spec.required ? el("span", { class: "req", title: "required", text: "*" }) : null,
      hint ? el("span", { class: "hint", text: hint }) : null);
    const help = spec.schema.description ? el("p", { class: "help" }, ...withCode(spec.schema.description)) : null;
    if (spec.kind === "boolean") {
      label.prepend(input);
      form.append(el("div", { class: "field check" }, label, help));
    } else {
      form.append(el("div", { class: "field" }, label, input, help));
    }
    input.addEventListener("input", () => input.removeAttribute("aria-invalid"));
  });
  const submit = el("button", { type: "submit", class: "btn btn-primary", text: `Start ${executor.name}` });
  const actions = el("div", { class: "form-actions" }, submit);
  form.append(errorBox, actions);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    errorBox.hidden = true;
    for (const { input } of inputs.values()) input.removeAttribute("aria-invalid");
    /** @type {Record<string, unknown>} */
    const payload = {};
    try {
      for (const [name, { spec, input }] of inputs) {
        const value = readField(spec, input);
        if (value !== undefined) payload[name] = value;
      }
    } catch (error) {
      if (error instanceof FieldError) {
        inputs.get(error.field)?.input.setAttribute("aria-invalid", "true");
        errorBox.textContent = error.message;
        errorBox.hidden = false;
        return;
      }
      throw error;
    }
    submit.disabled = true;
    const generation = live.generation;
    try {
      const answer = await api("POST", executor.demoPath || `/demo/tasks/${encodeURIComponent(executor.name)}`, payload);
      const created = answer.task;
      if (generation === live.generation && created?.id && !tasks.has(created.id)) {
        upsert({ ...created, executor: executor.name, createdAt: Date.now() });
      }
      renderList();
      if (generation === live.generation && created?.id) revealTask(created.id);
      toast(`Started “${created?.name ?? executor.name}”`, "ok", actions);
      markDirty();
    } catch (error) {
      errorBox.textContent = messageOf(error);
      errorBox.hidden = false;
      const details = error instanceof ApiError && Array.isArray(error.details) ? error.details : [];
      for (const detail of details) {
        const key = detail && typeof detail.key === "string" ? detail.key.replace(/^params\./, "") : null;
        if (key) inputs.get(key)?.input.setAttribute("aria-invalid", "true");
      }
    } finally {
      submit.disabled = false;
    }
  });
  return el("div", { id: panelId, class: "exec-panel", role: "tabpanel", "aria-labelledby": tabId, "data-executor": executor.name }, form);
}

export async function loadExecutors() {
  const answer = await api("GET", "/executors");
  const executors = answer.executors ?? [];
  const tabs = $("#executor-tabs");
  const forms = $("#executor-forms");
  tabs.replaceChildren();
  forms.replaceChildren();
  if (!executors.length) {
    forms.append(el("p", { class: "muted", text: "No executors are registered." }));
    return;
  }
  const initial = executors.find((/** @type {{name: string}} */ e) => e.name === "sample") ?? executors[0];
  /** @param {string} name */
  const select = (name) => {
    for (const tab of /** @type {HTMLCollectionOf<HTMLElement>} */ (tabs.children)) {
      const chosen = tab.dataset.executor === name;
      tab.setAttribute("aria-selected", String(chosen));
      tab.tabIndex = chosen ? 0 : -1;
    }
    for (const panel of /** @type {HTMLCollectionOf<HTMLElement>} */ (forms.children)) {
      panel.hidden = panel.dataset.executor !== name;
    }
  };
  executors.forEach((/** @type {Record<string, any>} */ executor, /** @type {number} */ index) => {
    const tabId = `tab-${index}`;
    const panelId = `panel-${index}`;
    tabs.append(el("button", {
      type: "button", class: "tab", role: "tab", id: tabId, "aria-controls": panelId, "data-executor": executor.name,
      title: executor.title, text: executor.name, onclick: () => select(executor.name),
    }));
    forms.append(buildForm(executor, panelId, tabId));
  });
  select(initial.name);
  live.formsReady = true;
  renderList();
}
