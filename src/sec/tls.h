/* HTTPS for `turnpike serve`: certificate files and the minimum TLS version,
 * from --tls-cert/--tls-key/--tls-min-version or [tls] cert/key/min_version. */
#ifndef TP_TLS_H
#define TP_TLS_H

#define TP_TLS_MAX_PEM (1024 * 1024)  /* largest certificate chain / key file read */

/* GnuTLS priorities for a minimum version "1.2" or "1.3"; NULL otherwise. */
const char *tp_tls_priorities(const char *min_version);
/* Configure the HTTP daemon for TLS when a certificate is given (flags win
 * over the [tls] section; NULL flags fall back to it). 1 = TLS on, 0 = plain
 * HTTP, -1 = error (logged). */
int tp_tls_configure(const char *cert_file, const char *key_file, const char *min_version);
#endif
