#!/usr/bin/env node
// Validates cert-manager and Prometheus-operator objects offline against
// their CRD schemas, for tests/kubernetes_manifests.rs.
//
//   node tests/k8s-crd/validate.js DOCS.json
//
// DOCS.json is a JSON array of Kubernetes objects (the test converts the
// rendered YAML). Every object must be of a kind one of the packages below
// models; anything else is an error, so nothing passes unchecked.
//
// Two checks per object, both generated from the upstream CRDs by
// @kubernetes-models (versions pinned in package-lock.json; which upstream
// CRD versions: deploy/kubernetes/README.md):
//
// 1. The model's validate(): ajv compiled from the CRD's openAPIV3Schema.
//    Types, enums, patterns, required fields. Like the API server, it lets
//    unknown fields through (a CRD schema does not forbid them; the server
//    prunes them silently, so a misspelt field is simply lost).
// 2. The object as a TypeScript object literal typed with the model's
//    interface (the .d.ts generated from the same schema), checked by the
//    TypeScript compiler with strict on: its excess-property check rejects
//    any field the schema does not declare, at any depth, metadata included.
//
// Prints one "ok" line per object, or every error; exits 1 on any error.
"use strict";

const fs = require("fs");
const path = require("path");
const ts = require("typescript");

// API group -> npm package that models it.
const PACKAGES = {
  "cert-manager.io": "@kubernetes-models/cert-manager",
  "monitoring.coreos.com": "@kubernetes-models/prometheus-operator",
};

function version(pkg) {
  return JSON.parse(fs.readFileSync(require.resolve(`${pkg}/package.json`), "utf8")).version;
}

// The model of an object: its module (the .d.ts shares the path), class
// and interface name; or an error text.
function modelOf(doc) {
  if (!doc || typeof doc !== "object" || Array.isArray(doc)) {
    return { error: "not an object" };
  }
  const { apiVersion, kind } = doc;
  if (typeof apiVersion !== "string" || typeof kind !== "string" || !/^\w+$/.test(kind)) {
    return { error: "no apiVersion/kind" };
  }
  const [group, ver] = apiVersion.split("/");
  const pkg = PACKAGES[group];
  if (!pkg || !ver || !/^\w+$/.test(ver)) {
    return { error: `no CRD schema for ${apiVersion} (known groups: ${Object.keys(PACKAGES).join(", ")})` };
  }
  const module = `${pkg}/${group}/${ver}/${kind}`;
  let cls;
  try {
    cls = require(module)[kind];
  } catch (e) {
    return { error: `no CRD schema for ${apiVersion} ${kind} in ${pkg} ${version(pkg)}` };
  }
  return { module, cls, iface: `I${kind}`, label: `${apiVersion} ${kind}` };
}

function name(doc) {
  return (doc && doc.metadata && doc.metadata.name) || "(unnamed)";
}

// Check 2: every object as a typed literal in one virtual TypeScript file.
function typecheck(docs, models) {
  const dir = __dirname;
  const file = path.join(dir, "__manifests__.ts");
  const lines = [];
  const starts = []; // first line of each object's literal
  docs.forEach((doc, i) => {
    const m = models[i];
    if (m.error) return;
    lines.push(`import type { ${m.iface} as T${i} } from ${JSON.stringify(m.module)};`);
  });
  docs.forEach((doc, i) => {
    if (models[i].error) return;
    starts.push([lines.length, i]);
    const literal = JSON.stringify(doc, null, 2).split("\n");
    literal[0] = `export const doc${i}: T${i} = ${literal[0]}`;
    literal[literal.length - 1] += ";";
    lines.push(...literal);
  });
  const source = lines.join("\n") + "\n";
  const options = {
    strict: true,
    noEmit: true,
    skipLibCheck: true,
    types: [],
    target: ts.ScriptTarget.ES2020,
    module: ts.ModuleKind.CommonJS,
    moduleResolution: ts.ModuleResolutionKind.Node10,
  };
  const host = ts.createCompilerHost(options);
  const getSourceFile = host.getSourceFile;
  host.getSourceFile = (f, lang, ...rest) =>
    f === file ? ts.createSourceFile(f, source, lang) : getSourceFile(f, lang, ...rest);
  const fileExists = host.fileExists;
  host.fileExists = (f) => f === file || fileExists(f);
  const readFile = host.readFile;
  host.readFile = (f) => (f === file ? source : readFile(f));
  const program = ts.createProgram([file], options, host);
  const errors = docs.map(() => []);
  for (const d of ts.getPreEmitDiagnostics(program)) {
    const text = ts.flattenDiagnosticMessageText(d.messageText, "\n  ");
    if (!d.file || d.file.fileName !== file) {
      throw new Error(`TypeScript: ${text}`);
    }
    const line = d.file.getLineAndCharacterOfPosition(d.start).line;
    let owner = -1;
    for (const [start, i] of starts) if (start <= line) owner = i;
    if (owner < 0) throw new Error(`TypeScript, in the imports: ${text}`);
    errors[owner].push(`undeclared field or wrong type (TypeScript): ${text}`);
  }
  return errors;
}

function main() {
  const file = process.argv[2];
  if (!file || process.argv.length !== 3) {
    console.error("usage: node validate.js DOCS.json");
    process.exit(2);
  }
  const docs = JSON.parse(fs.readFileSync(file, "utf8"));
  if (!Array.isArray(docs)) throw new Error(`${file}: not a JSON array`);
  console.log(
    Object.values(PACKAGES)
      .map((p) => `${p}@${version(p)}`)
      .concat([`typescript@${ts.version}`])
      .join(" "),
  );
  const models = docs.map(modelOf);
  const typeErrors = typecheck(docs, models);
  let failed = 0;
  docs.forEach((doc, i) => {
    const m = models[i];
    const errors = m.error ? [m.error] : [];
    if (!m.error) {
      try {
        new m.cls(doc).validate();
      } catch (e) {
        const details = (e.details || []).map((x) => `${x.instancePath || "/"} ${x.message}`);
        errors.push(`schema (ajv): ${details.length ? details.join("; ") : e.message}`);
      }
      errors.push(...typeErrors[i]);
    }
    const label = m.label || "?";
    if (errors.length) {
      failed++;
      console.log(`INVALID ${label} ${name(doc)}`);
      for (const e of errors) console.log(`  ${e}`);
    } else {
      console.log(`ok ${label} ${name(doc)}`);
    }
  });
  if (failed) {
    console.log(`${failed} of ${docs.length} objects invalid`);
    process.exit(1);
  }
}

main();
