/* The settings table: a small array, searched linearly (a few dozen keys,
 * read at start-up). */
#include "config.h"
#include "log.h"

#include <ctype.h>
#include <stdatomic.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

struct setting {
  char *section, *key, *value;
};

static struct setting *settings;
static size_t nsettings, cap;

void tp_config_put(const char *section, const char *key, const char *value)
{
  for (size_t i = 0; i < nsettings; i++)
    if (strcasecmp(settings[i].section, section) == 0 && strcasecmp(settings[i].key, key) == 0) {
      free(settings[i].value);
      settings[i].value = strdup(value);
      return;
    }
  if (nsettings == cap) {
    cap = cap ? cap * 2 : 32;
    settings = realloc(settings, cap * sizeof *settings);
    if (!settings)
      abort();
  }
  settings[nsettings].section = strdup(section);
  settings[nsettings].key = strdup(key);
  settings[nsettings].value = strdup(value);
  if (!settings[nsettings].section || !settings[nsettings].key || !settings[nsettings].value)
    abort();
  nsettings++;
}

static void env_name(char *out, size_t cap_, const char *section, const char *key)
{
  size_t n = (size_t)snprintf(out, cap_, "TURNPIKE_%s_%s", section, key);
  if (n >= cap_)
    n = cap_ - 1;
  for (size_t i = 9; i < n; i++)
    out[i] = isalnum((unsigned char)out[i]) ? (char)toupper((unsigned char)out[i]) : '_';
}

const char *tp_config_get(const char *section, const char *key)
{
  char var[256];
  env_name(var, sizeof var, section, key);
  const char *e = getenv(var);
  if (e && *e) /* set but blank (a container's empty variable): not set, the file's value holds */
    return e;
  for (size_t i = 0; i < nsettings; i++)
    if (strcasecmp(settings[i].section, section) == 0 && strcasecmp(settings[i].key, key) == 0)
      return settings[i].value;
  return NULL;
}

static _Atomic int invalid_values;

int tp_config_invalid_count(void)
{
  return invalid_values;
}

void tp_config_invalid(const char *section, const char *key, const char *value)
{
  tp_log(TP_LOG_WARN, "config_invalid", "{s:s, s:s, s:s}", "section", section, "key", key, "value", value);
  invalid_values++;
}

int64_t tp_config_int(const char *section, const char *key, int64_t def, int64_t min, int64_t max)
{
  const char *v = tp_config_get(section, key);
  if (!v)
    return def;
  char *end;
  errno = 0;
  long long n = strtoll(v, &end, 10);
  if (errno || end == v || *end || n < min || n > max) {
    tp_log(TP_LOG_WARN, "config_invalid", "{s:s, s:s, s:s}", "section", section, "key", key, "value", v);
    invalid_values++;
    return def;
  }
  return n;
}

bool tp_config_bool(const char *section, const char *key, bool def)
{
  const char *v = tp_config_get(section, key);
  if (!v)
    return def;
  if (!strcasecmp(v, "1") || !strcasecmp(v, "true") || !strcasecmp(v, "yes") || !strcasecmp(v, "on"))
    return true;
  if (!strcasecmp(v, "0") || !strcasecmp(v, "false") || !strcasecmp(v, "no") || !strcasecmp(v, "off"))
    return false;
  tp_log(TP_LOG_WARN, "config_invalid", "{s:s, s:s, s:s}", "section", section, "key", key, "value", v);
  invalid_values++;
  return def;
}

void tp_config_sections(const char *prefix, void (*fn)(const char *section, void *arg), void *arg)
{
  size_t pl = strlen(prefix);
  for (size_t i = 0; i < nsettings; i++) {
    if (strncasecmp(settings[i].section, prefix, pl) != 0)
      continue;
    bool seen = false;
    for (size_t j = 0; j < i && !seen; j++)
      seen = strcasecmp(settings[j].section, settings[i].section) == 0;
    if (!seen)
      fn(settings[i].section, arg);
  }
}

void tp_config_keys(const char *section, const char *prefix, void (*fn)(const char *key, const char *value, void *arg),
                    void *arg)
{
  size_t pl = strlen(prefix);
  for (size_t i = 0; i < nsettings; i++)
    if (strcasecmp(settings[i].section, section) == 0 && strncasecmp(settings[i].key, prefix, pl) == 0)
      fn(settings[i].key, settings[i].value, arg);
}

void tp_config_reset(void)
{
  for (size_t i = 0; i < nsettings; i++) {
    free(settings[i].section);
    free(settings[i].key);
    free(settings[i].value);
  }
  free(settings);
  settings = NULL;
  nsettings = cap = 0;
}
