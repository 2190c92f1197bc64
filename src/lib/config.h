/* Every setting of the INI file, kept for the features that read their own
 * sections ([processor.NAME], [webhooks], [tls] ...). A value is looked up in
 * the environment first as TURNPIKE_<SECTION>_<KEY> (section and key upper
 * case, every character that is not a letter or digit as '_'), then in the
 * file. Loaded once at start-up, read-only afterwards (no locking needed). */
#ifndef TP_CONFIG_H
#define TP_CONFIG_H
#include <stdbool.h>
#include <stdint.h>

/* Remember one setting from the file (later settings of the same key win). */
void tp_config_put(const char *section, const char *key, const char *value);
/* The value, or NULL. */
const char *tp_config_get(const char *section, const char *key);
/* The value as an integer in [min, max]; def when absent; def (and a log
 * warning) when unparsable or out of range. */
int64_t tp_config_int(const char *section, const char *key, int64_t def, int64_t min, int64_t max);
bool tp_config_bool(const char *section, const char *key, bool def);
/* Call fn for every distinct section whose name starts with prefix, in file
 * order (e.g. prefix "processor." gives each processor section). */
void tp_config_sections(const char *prefix, void (*fn)(const char *section, void *arg), void *arg);
/* Call fn for every key of one section that starts with prefix, in file
 * order (e.g. the "metadata." match keys of a [route.NAME] section). */
void tp_config_keys(const char *section, const char *prefix, void (*fn)(const char *key, const char *value, void *arg),
                    void *arg);
/* How many values tp_config_int/tp_config_bool found present but not valid
 * (each logged config_invalid and read as its default): `turnpike serve`
 * stops when any was read before it listens. */
int tp_config_invalid_count(void);
/* A value a feature parsed itself and found not valid: logged config_invalid
 * and counted with the others (the feature then uses its default). */
void tp_config_invalid(const char *section, const char *key, const char *value);
/* Forget everything (tests). */
void tp_config_reset(void);
#endif
