"""The resource types of the official stripe-node SDK (tests/sdk/node_modules,
the version `make test` installs), read from its .d.ts files: for each
interface its fields (name, optional?, TypeScript type), and each
single-line `type X = ...` alias, both under their qualified names
("Charge.PaymentMethodDetails.Card", "PaymentIntent.Status").

check(obj, "Charge") walks a JSON object the gateway returned against the
SDK's type and lists what disagrees: a field the type declares without `?`
(always present, possibly null) that is missing, a null where the type does
not allow one, a string/number/boolean of the wrong kind, an enum value the
type does not list. Nested objects are followed through the type names the
fields refer to."""
import os
import re

HERE = os.path.dirname(os.path.abspath(__file__))
SDK = os.path.join(HERE, "..", "sdk", "node_modules", "stripe", "cjs")

_PRIMS = {"string": str, "number": (int, float), "boolean": bool}


def _strip_comments(src):
    return re.sub(r"/\*.*?\*/", "", src, flags=re.S)


def parse(file_name, types, aliases):
    """Add the interfaces and aliases of one .d.ts (relative to resources/,
    or to the package's cjs/ when it starts with ../) to types and aliases."""
    with open(os.path.join(SDK, "resources", file_name), encoding="utf-8") as f:
        src = _strip_comments(f.read())
    stack = []  # ("ns", name) | ("if", qualified name) | ("blk", None)
    for line in src.split("\n"):
        s = line.strip()
        ns = [n for k, n in stack if k == "ns"]
        in_if = [n for k, n in stack if k == "if"]
        m = re.match(r"(?:export )?(?:declare )?namespace (\w+) \{$", s)
        if m and not in_if:
            stack.append(("ns", m.group(1)))
            continue
        m = re.match(r"(?:export )?interface (\w+)(?:<\w+>)?(?: extends [\w.<>, ]+)? \{$", s)
        if m and not in_if:
            q = ".".join(ns + [m.group(1)])
            types[q] = []
            stack.append(("if", q))
            continue
        m = re.match(r"(?:export )?type (\w+) = (.+);$", s)
        if m and not in_if:
            aliases[".".join(ns + [m.group(1)])] = m.group(2)
            continue
        if in_if and stack[-1] == ("if", in_if[-1]):
            m = re.match(r"(\w+)(\??):\s*(.*?);?$", s)
            if m:
                types[in_if[-1]].append((m.group(1), m.group(2) == "?", m.group(3)))
        for _ in range(s.count("{")):
            stack.append(("blk", None))
        for _ in range(s.count("}")):
            if stack:
                stack.pop()


class Types:
    def __init__(self, files):
        self.types, self.aliases = {}, {}
        for f in files:
            parse(f, self.types, self.aliases)

    def resolve(self, scope, ref, table):
        """The qualified name `ref` means inside namespace `scope`."""
        for i in range(len(scope), -1, -1):
            q = ".".join(scope[:i] + [ref])
            if q in table:
                return q
        return None

    def _alts(self, typ, scope, depth=0):
        """The alternatives of a union type, aliases expanded."""
        out = []
        for alt in re.split(r"\s*\|\s*", typ.strip()):
            a = self.resolve(scope, alt, self.aliases) if re.match(r"^[A-Z][\w.]*$", alt) else None
            if a and depth < 4:
                out += self._alts(self.aliases[a], a.split(".")[:-1], depth + 1)
            else:  # an open enum ('a' | 'b' | OtherString) takes any string
                out.append("string" if alt == "OtherString" else alt)
        return out

    def check(self, obj, name, path, problems, extras=None):
        fields = self.types[name]
        scope = name.split(".")[:-1]
        for field, optional, typ in fields:
            where = "%s.%s" % (path, field)
            if field not in obj:
                if not optional:
                    problems.append("%s missing (%s)" % (where, typ))
                continue
            v = obj[field]
            if "<" in typ:  # Array<...>, Stripe.Metadata, generics: only presence is checked
                continue
            alts = self._alts(typ, scope)
            if v is None:
                if "null" not in alts:
                    problems.append("%s is null; the type is %s" % (where, typ))
                continue
            literals = [a[1:-1] for a in alts if len(a) > 1 and a[0] == "'" and a[-1] == "'"]
            prims = [a for a in alts if a in _PRIMS]
            if isinstance(v, str) and literals and not prims and v not in literals:
                problems.append("%s = %r is not one of %s" % (where, v, literals))
            elif isinstance(v, bool):
                if prims and "boolean" not in prims and not literals:
                    problems.append("%s = %r; the type is %s" % (where, v, typ))
            elif isinstance(v, (int, float)):
                if prims and "number" not in prims:
                    problems.append("%s = %r; the type is %s" % (where, v, typ))
            elif isinstance(v, str):
                if prims and "string" not in prims and not literals:
                    problems.append("%s = %r; the type is %s" % (where, v, typ))
            elif isinstance(v, dict) and v.get("object") not in ("list", "search_result"):
                for alt in alts:
                    q = self.resolve(scope, alt, self.types) if re.match(r"^[A-Z][\w.]*$", alt) else None
                    if q:
                        self.check(v, q, where, problems, extras)
                        break
        if extras is not None:
            known = {f[0] for f in fields}
            extras.update("%s.%s" % (path, k) for k in obj if k not in known)
        return problems
