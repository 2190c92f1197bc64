#!/usr/bin/env python3
"""Generate Turnpike's error enum, message table and docs from errors/registry.tsv.

Usage:
  gen.py header     REGISTRY OUT.h    the enum and lookup prototypes
  gen.py source     REGISTRY OUT.c    the sorted tables and lookups
  gen.py docs       REGISTRY OUT.md   docs/errors.md
  gen.py check-docs REGISTRY DOCS.md  fail if DOCS.md is not what `docs` writes
  gen.py check      REGISTRY          validate only

Python 3 standard library only, so the build needs nothing else.
"""

import difflib
import http
import os
import re
import sys

COLUMNS = ['number', 'name', 'http_status', 'type', 'code', 'decline_code',
           'retryable', 'message']

TYPES = {'invalid_request_error', 'card_error', 'idempotency_error', 'api_error',
         'authentication_error', 'permission_error', 'rate_limit_error'}

# Number ranges per component; a row outside its section is a registry bug.
SECTIONS = [
    (1000, 'Request validation, parameters and object states'),
    (2000, 'Authentication, permission and rate limits'),
    (3000, 'Idempotency and concurrency'),
    (4000, 'Card validation and declines'),
    (5000, 'ISO 8583 field 39 response codes'),
    (6000, 'Processor transport failures'),
    (7000, 'Fraud screening and 3-D Secure / SCA'),
    (8000, 'Store and internal errors'),
]

# ISO 8583 field 39 codes that approve: never errors, so they have no row.
ISO_APPROVALS = ['00', '10', '11', '16', '85']

NAME_RE = re.compile(r'^[a-z0-9_]+$')
CODE_RE = re.compile(r'^[a-z0-9_]+$')
ISO_NAME_RE = re.compile(r'^iso_([0-9a-z]{2})$')
HTTP_CODES = {int(s) for s in http.HTTPStatus}


class Row:
    __slots__ = ('lineno', 'number', 'name', 'http_status', 'type', 'code',
                 'decline_code', 'retryable', 'message')


class RegistryError(Exception):
    pass


def section_of(number):
    for base, title in SECTIONS:
        if base < number < base + 1000:
            return base, title
    return None


def load(path):
    """Parse and validate the registry; raise RegistryError listing every problem."""
    try:
        with open(path, encoding='utf-8') as f:
            lines = f.read().split('\n')
    except OSError as e:
        raise RegistryError('%s: %s' % (path, e.strerror))
    if lines and lines[-1] == '':
        lines.pop()

    problems = []

    def bad(lineno, msg):
        problems.append('%s:%d: %s' % (path, lineno, msg))

    rows = []
    header_seen = False
    for lineno, line in enumerate(lines, 1):
        if line.startswith('#') or line.strip() == '':
            continue
        cells = line.split('\t')
        if not header_seen:
            if cells != COLUMNS:
                bad(lineno, 'header line must be: ' + '<TAB>'.join(COLUMNS))
                break
            header_seen = True
            continue
        if len(cells) != len(COLUMNS):
            bad(lineno, 'expected %d tab-separated cells, found %d'
                % (len(COLUMNS), len(cells)))
            continue
        row = Row()
        row.lineno = lineno
        num, name, status, typ, code, dcode, retry, msg = cells
        if not re.fullmatch(r'[1-9][0-9]*', num):
            bad(lineno, 'number %r is not a positive integer' % num)
            continue
        row.number = int(num)
        row.name = name
        if not NAME_RE.match(name):
            bad(lineno, 'name %r must match ^[a-z0-9_]+$' % name)
        if name == 'ok':
            bad(lineno, 'name "ok" is reserved for TP_ERR_OK')
        sec = section_of(row.number)
        if sec is None:
            bad(lineno, '%s: number %d is in no section (1001-8999, not a '
                'multiple of 1000)' % (name, row.number))
        if not re.fullmatch(r'[0-9]{3}', status):
            bad(lineno, '%s: http_status %r is not a number' % (name, status))
            row.http_status = 0
        else:
            row.http_status = int(status)
            if row.http_status not in HTTP_CODES or not 400 <= row.http_status <= 599:
                bad(lineno, '%s: http_status %d is not an HTTP error status'
                    % (name, row.http_status))
        row.type = typ
        if typ not in TYPES:
            bad(lineno, '%s: type %r is not one of %s'
                % (name, typ, ', '.join(sorted(TYPES))))
        for label, val in (('code', code), ('decline_code', dcode)):
            if val != '-' and not CODE_RE.match(val):
                bad(lineno, '%s: %s %r must be - or match ^[a-z0-9_]+$'
                    % (name, label, val))
        row.code = None if code == '-' else code
        row.decline_code = None if dcode == '-' else dcode
        if retry not in ('yes', 'no'):
            bad(lineno, '%s: retryable must be yes or no, not %r' % (name, retry))
        row.retryable = retry == 'yes'
        row.message = msg
        check_message(row, lambda m, ln=lineno: bad(ln, m))
        check_consistency(row, lambda m, ln=lineno: bad(ln, m))
        rows.append(row)

    if not header_seen and not problems:
        problems.append('%s: no header line' % path)

    seen_num, seen_name = {}, {}
    prev = None
    for row in rows:
        if row.number in seen_num:
            bad(row.lineno, 'number %d already used on line %d'
                % (row.number, seen_num[row.number]))
        seen_num.setdefault(row.number, row.lineno)
        if row.name in seen_name:
            bad(row.lineno, 'name %r already used on line %d'
                % (row.name, seen_name[row.name]))
        seen_name.setdefault(row.name, row.lineno)
        if prev is not None and row.number < prev.number:
            bad(row.lineno, 'rows must be in ascending number order (%d after %d)'
                % (row.number, prev.number))
        prev = row

    by_name = {r.name: r for r in rows}
    for row in rows:
        m = ISO_NAME_RE.match(row.name)
        if m and row.decline_code and 'decline_' + row.decline_code not in by_name:
            bad(row.lineno, '%s: decline_code %r has no decline_%s row'
                % (row.name, row.decline_code, row.decline_code))
        if m and m.group(1).upper() in ISO_APPROVALS:
            bad(row.lineno, '%s: ISO code %s is an approval, not an error'
                % (row.name, m.group(1).upper()))

    if problems:
        raise RegistryError('\n'.join(problems))
    if not rows:
        raise RegistryError('%s: no rows' % path)
    return rows


def check_message(row, bad):
    msg = row.message
    if not msg.strip():
        bad('%s: message is empty' % row.name)
        return
    if msg != msg.strip():
        bad('%s: message has leading or trailing spaces' % row.name)
    if any(ord(c) < 0x20 or ord(c) == 0x7f for c in msg):
        bad('%s: message contains a control character' % row.name)
    # Messages go through printf-style substitution: one %s, nothing else.
    if msg.replace('%s', '').count('%'):
        bad('%s: message may contain no %% sequence other than %%s' % row.name)
    if msg.count('%s') > 1:
        bad('%s: message may contain at most one %%s' % row.name)


def check_consistency(row, bad):
    """Rules that keep the registry matching how Stripe shapes errors."""
    name, typ, status = row.name, row.type, row.http_status
    if (typ == 'card_error') != (status == 402):
        bad('%s: card_error and HTTP 402 go together (type %s, status %d)'
            % (name, typ, status))
    if typ == 'rate_limit_error' and status != 429:
        bad('%s: rate_limit_error must be HTTP 429' % name)
    if typ == 'permission_error' and status != 403:
        bad('%s: permission_error must be HTTP 403' % name)
    if (typ == 'api_error') != (500 <= status <= 599):
        bad('%s: api_error and HTTP 5xx go together (type %s, status %d)'
            % (name, typ, status))
    if row.decline_code and typ != 'card_error':
        bad('%s: only card_error rows may have a decline_code' % name)
    if name.startswith('decline_'):
        want = name[len('decline_'):]
        if row.decline_code != want:
            bad('%s: decline_code must be %r' % (name, want))
        if not 4001 <= row.number <= 4099:
            bad('%s: decline_ rows are numbered 4001-4099' % name)
    m = ISO_NAME_RE.match(name)
    if name.startswith('iso_'):
        if not m:
            bad('%s: iso_ rows are named iso_<two characters [0-9a-z]>' % name)
        elif not 5001 <= row.number <= 5999:
            bad('%s: iso_ rows are numbered 5001-5999' % name)
        elif m.group(1).isdigit() and row.number != 5000 + int(m.group(1)):
            bad('%s: numeric ISO code %s must be number %d'
                % (name, m.group(1), 5000 + int(m.group(1))))
        if not row.decline_code:
            bad('%s: iso_ rows must name the Stripe decline_code they map to' % name)
    elif 5000 < row.number < 6000:
        bad('%s: only iso_ rows belong in 5000-5999' % name)


# ---------------------------------------------------------------- C output

def c_str(s):
    if s is None:
        return 'NULL'
    out = []
    for ch in s:
        if ch in '\\"':
            out.append('\\' + ch)
        elif ch == '?':
            out.append('\\?')   # no trigraphs, however unlikely
        elif ord(ch) < 0x20 or ord(ch) > 0x7e:
            for b in ch.encode('utf-8'):
                out.append('\\%03o' % b)
        else:
            out.append(ch)
    return '"' + ''.join(out) + '"'


def enum_name(name):
    return 'TP_ERR_' + name.upper()


GEN_NOTE = 'Generated by errors/gen.py from errors/registry.tsv. Do not edit.'


def gen_header(rows):
    width = max(len(enum_name(r.name)) for r in rows)
    out = ['/* %s */' % GEN_NOTE,
           '#ifndef TP_ERRORS_H',
           '#define TP_ERRORS_H',
           '',
           '#include <stdbool.h>',
           '',
           '/* Every error Turnpike can return; the values are stable wire numbers (tp_code). */',
           'enum tp_err {',
           '\t%-*s = 0,' % (width, 'TP_ERR_OK')]
    for r in rows:
        out.append('\t%-*s = %d,' % (width, enum_name(r.name), r.number))
    out += ['};',
            '',
            '#define TP_ERR_REGISTRY_SIZE %du' % len(rows),
            '',
            'struct tp_error_info {',
            '\tint number;',
            '\tconst char *name;',
            '\tint http_status;',
            '\tconst char *type;',
            '\tconst char *code;         /* NULL when none */',
            '\tconst char *decline_code; /* NULL when none */',
            '\tbool retryable;',
            '\t/* At most one %s: a parameter name or object id, never card data. */',
            '\tconst char *message;',
            '};',
            '',
            '/* The registry row for e; NULL for TP_ERR_OK or a value not in the registry. */',
            'const struct tp_error_info *tp_error_info(enum tp_err e);',
            '',
            '/* The row with this registry name ("rate_limited"); NULL if none. */',
            'const struct tp_error_info *tp_error_by_name(const char *name);',
            '',
            '/* The decline_<x> row for Stripe decline code x; NULL if none. */',
            'const struct tp_error_info *tp_error_by_decline_code(const char *decline_code);',
            '',
            '/* The iso_<xx> row for an ISO 8583 field 39 code (case-insensitive);',
            ' * NULL for approvals and unknown codes. */',
            'const struct tp_error_info *tp_error_by_iso_code(const char *field39);',
            '',
            '/* True when an ISO 8583 field 39 code approves the transaction. */',
            'bool tp_iso_code_is_approval(const char *field39);',
            '',
            '/* Number of registry rows, for iteration with tp_error_at. */',
            'unsigned tp_error_count(void);',
            '',
            '/* The i-th row in ascending number order; NULL when i >= tp_error_count(). */',
            'const struct tp_error_info *tp_error_at(unsigned i);',
            '',
            '#endif',
            '']
    return '\n'.join(out)


def gen_source(rows):
    rows = sorted(rows, key=lambda r: r.number)
    index = {r.name: i for i, r in enumerate(rows)}
    out = ['/* %s */' % GEN_NOTE,
           '#include "tp_errors.h"',
           '',
           '#include <stdlib.h>',
           '#include <string.h>',
           '',
           '/* Sorted by number so tp_error_info can binary-search. */',
           'static const struct tp_error_info tp_errors[] = {']
    for r in rows:
        out.append('\t{ %d, %s, %d, %s, %s, %s, %s,\n\t  %s },' % (
            r.number, c_str(r.name), r.http_status, c_str(r.type),
            c_str(r.code), c_str(r.decline_code),
            'true' if r.retryable else 'false', c_str(r.message)))
    out += ['};',
            '',
            '/* A string key and the index of its row, for the sorted lookup tables. */',
            'struct tp_error_key {',
            '\tconst char *key;',
            '\tunsigned short row;',
            '};',
            '']

    def key_table(cname, comment, pairs):
        pairs = sorted(pairs, key=lambda p: p[0].encode('ascii'))
        out.append('/* %s */' % comment)
        out.append('static const struct tp_error_key %s[] = {' % cname)
        for key, i in pairs:
            out.append('\t{ %s, %d },' % (c_str(key), i))
        out.append('};')
        out.append('')

    key_table('tp_errors_by_name', 'Row names in strcmp order.',
              [(r.name, index[r.name]) for r in rows])
    key_table('tp_errors_by_decline', 'Stripe decline codes (decline_<x> rows) in strcmp order.',
              [(r.name[len('decline_'):], index[r.name]) for r in rows
               if r.name.startswith('decline_')])
    key_table('tp_errors_by_iso', 'ISO 8583 field 39 codes, upper case, in strcmp order.',
              [(r.name[len('iso_'):].upper(), index[r.name]) for r in rows
               if r.name.startswith('iso_')])
    out.append('static const char *const tp_iso_approvals[] = { %s };'
               % ', '.join(c_str(c) for c in ISO_APPROVALS))
    out.append('')

    out.append(r'''#define TP_NELEM(a) (sizeof(a) / sizeof((a)[0]))

static int tp_error_cmp_number(const void *k, const void *e)
{
	int n = *(const int *)k;
	const struct tp_error_info *info = e;

	return (n > info->number) - (n < info->number);
}

static int tp_error_cmp_key(const void *k, const void *e)
{
	const struct tp_error_key *entry = e;

	return strcmp(k, entry->key);
}

static const struct tp_error_info *tp_error_find(const struct tp_error_key *table,
						 size_t n, const char *key)
{
	const struct tp_error_key *hit;

	if (key == NULL)
		return NULL;
	hit = bsearch(key, table, n, sizeof(table[0]), tp_error_cmp_key);
	return hit != NULL ? &tp_errors[hit->row] : NULL;
}

/* Field 39 is exactly two characters; upper-case it so "n7" finds "N7". */
static bool tp_iso_normalise(const char *field39, char out[3])
{
	if (field39 == NULL || field39[0] == '\0' || field39[1] == '\0' || field39[2] != '\0')
		return false;
	for (int i = 0; i < 2; i++) {
		char c = field39[i];

		if (c >= 'a' && c <= 'z')
			c = (char)(c - 'a' + 'A');
		else if (!((c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9')))
			return false;
		out[i] = c;
	}
	out[2] = '\0';
	return true;
}

const struct tp_error_info *tp_error_info(enum tp_err e)
{
	int n = (int)e;

	return bsearch(&n, tp_errors, TP_NELEM(tp_errors), sizeof(tp_errors[0]),
		       tp_error_cmp_number);
}

const struct tp_error_info *tp_error_by_name(const char *name)
{
	return tp_error_find(tp_errors_by_name, TP_NELEM(tp_errors_by_name), name);
}

const struct tp_error_info *tp_error_by_decline_code(const char *decline_code)
{
	return tp_error_find(tp_errors_by_decline, TP_NELEM(tp_errors_by_decline),
			     decline_code);
}

const struct tp_error_info *tp_error_by_iso_code(const char *field39)
{
	char code[3];

	if (!tp_iso_normalise(field39, code))
		return NULL;
	return tp_error_find(tp_errors_by_iso, TP_NELEM(tp_errors_by_iso), code);
}

bool tp_iso_code_is_approval(const char *field39)
{
	char code[3];

	if (!tp_iso_normalise(field39, code))
		return false;
	for (size_t i = 0; i < TP_NELEM(tp_iso_approvals); i++)
		if (strcmp(code, tp_iso_approvals[i]) == 0)
			return true;
	return false;
}

unsigned tp_error_count(void)
{
	return (unsigned)TP_NELEM(tp_errors);
}

const struct tp_error_info *tp_error_at(unsigned i)
{
	return i < TP_NELEM(tp_errors) ? &tp_errors[i] : NULL;
}
''')
    return '\n'.join(out)


# ---------------------------------------------------------------- docs

def md_cell(s):
    if s is None:
        return ''
    return s.replace('\\', '\\\\').replace('|', '\\|')


def gen_docs(rows):
    out = ['# Turnpike error codes',
           '',
           '<!-- Generated by `errors/gen.py docs` from `errors/registry.tsv`.',
           '     Do not edit by hand: change the registry and run',
           '     `python3 errors/gen.py docs errors/registry.tsv docs/errors.md`. -->',
           '',
           'Every error Turnpike returns has the shape of Stripe\'s',
           '`{"error": {"type", "code", "decline_code", "message", "param"}}` plus a',
           'stable numeric `tp_code`, the **Number** column below. A number never',
           'changes meaning and is never reused. *Retryable* means the same request',
           'may succeed later unchanged. `%s` in a message stands for a parameter',
           'name or object id from the request.',
           '',
           'ISO 8583 rows give the issuer\'s answer for operators; clients see the',
           'message of the matching `decline_` row. Approval codes (%s) are not'
           % ', '.join(ISO_APPROVALS),
           'errors and have no row.',
           '',
           '%d errors in %d sections:' % (len(rows), len(SECTIONS)),
           '']
    groups = {}
    for r in sorted(rows, key=lambda r: r.number):
        groups.setdefault(section_of(r.number)[0], []).append(r)
    for base, title in SECTIONS:
        anchor = '%d-%d' % (base, base + 999)
        out.append('- [%s: %s](#%s) (%d)' % (anchor, title,
                   re.sub(r'[^a-z0-9 -]', '', ('%s %s' % (anchor, title)).lower())
                   .replace(' ', '-'), len(groups.get(base, []))))
    for base, title in SECTIONS:
        out += ['', '## %d-%d %s' % (base, base + 999, title), '']
        if not groups.get(base):
            out.append('No errors yet.')
            continue
        out.append('| Number | Name | HTTP | Type | Code | Decline code | Retryable | Message |')
        out.append('|---:|---|---:|---|---|---|---|---|')
        for r in groups[base]:
            out.append('| %d | `%s` | %d | `%s` | %s | %s | %s | %s |' % (
                r.number, r.name, r.http_status, r.type,
                '`%s`' % r.code if r.code else '',
                '`%s`' % r.decline_code if r.decline_code else '',
                'yes' if r.retryable else 'no', md_cell(r.message)))
    out.append('')
    return '\n'.join(out)


# ---------------------------------------------------------------- main

def write(path, text):
    """Write via a temporary file so an interrupted build leaves no half file."""
    tmp = path + '.tmp'
    with open(tmp, 'w', encoding='utf-8') as f:
        f.write(text)
    os.replace(tmp, path)


def usage():
    sys.stderr.write(__doc__)
    return 2


def main(argv):
    if len(argv) < 3:
        return usage()
    mode, reg = argv[1], argv[2]
    gens = {'header': gen_header, 'source': gen_source, 'docs': gen_docs}
    if mode in gens or mode == 'check-docs':
        if len(argv) != 4:
            return usage()
    elif mode == 'check':
        if len(argv) != 3:
            return usage()
    else:
        return usage()
    try:
        rows = load(reg)
    except RegistryError as e:
        sys.stderr.write('gen.py: invalid registry:\n%s\n' % e)
        return 1
    if mode == 'check':
        return 0
    if mode == 'check-docs':
        want = gen_docs(rows)
        try:
            with open(argv[3], encoding='utf-8') as f:
                have = f.read()
        except OSError as e:
            sys.stderr.write('gen.py: %s: %s\n' % (argv[3], e.strerror))
            return 1
        if have == want:
            return 0
        diff = list(difflib.unified_diff(have.splitlines(), want.splitlines(),
                                         argv[3], 'generated', lineterm=''))
        sys.stderr.write('gen.py: %s is out of date with %s; regenerate it with\n'
                         '  python3 errors/gen.py docs errors/registry.tsv docs/errors.md\n'
                         % (argv[3], reg))
        sys.stderr.write('\n'.join(diff[:60]) + '\n')
        return 1
    write(argv[3], gens[mode](rows))
    return 0


if __name__ == '__main__':
    sys.exit(main(sys.argv))
