/* Subcommands implemented outside turnpike.c. Each returns the exit status. */
#ifndef TP_COMMANDS_H
#define TP_COMMANDS_H
int tp_cmd_sim(int argc, char **argv);          /* src/sim/sim.c */
int tp_cmd_kek(int argc, char **argv);          /* src/sec/kek.c */
int tp_cmd_audit(int argc, char **argv);        /* src/sec/audit.c */
int tp_cmd_oauth_client(int argc, char **argv); /* src/sec/oauth.c */
int tp_cmd_api_key(int argc, char **argv);      /* src/sec/apikey.c */
int tp_cmd_backup(int argc, char **argv);       /* src/store/backup.c */
int tp_cmd_restore(int argc, char **argv);      /* src/store/backup.c */
#endif
