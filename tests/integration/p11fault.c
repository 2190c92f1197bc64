/* test_vault loads this as the PKCS#11 module in place of SoftHSM2 (whose
 * calls it passes on): while the file named by $TP_P11FAULT_FILE exists the
 * token is "removed": no session opens (CKR_TOKEN_NOT_PRESENT) and every
 * session opened before is dead for good (CKR_SESSION_HANDLE_INVALID), as a
 * pulled USB token or a restarted network HSM leaves them. While the file
 * named by $TP_P11FAULT_PIN_FILE exists, every login is refused as a wrong
 * PIN (CKR_PIN_INCORRECT) and counted there, a line each. While the file
 * named by $TP_P11FAULT_HANG_FILE exists, encryption and decryption do not
 * return (at most 60 s), as a token that stopped answering. */
#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>
#include <p11-kit-1/p11-kit/pkcs11.h>

#define MAX_SESSIONS 512

static CK_FUNCTION_LIST_PTR softhsm;
static CK_FUNCTION_LIST wrapped;
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static struct {
  CK_SESSION_HANDLE h;
  int dead;
} sessions[MAX_SESSIONS];
static int nsessions;

static int removed(void)
{
  const char *f = getenv("TP_P11FAULT_FILE");
  if (!f || access(f, F_OK) != 0)
    return 0;
  pthread_mutex_lock(&mu);
  for (int i = 0; i < nsessions; i++)
    sessions[i].dead = 1;
  pthread_mutex_unlock(&mu);
  return 1;
}

static CK_RV check(CK_SESSION_HANDLE s)
{
  if (removed())
    return CKR_DEVICE_REMOVED;
  CK_RV r = CKR_OK;
  pthread_mutex_lock(&mu);
  for (int i = 0; i < nsessions; i++)
    if (sessions[i].h == s && sessions[i].dead)
      r = CKR_SESSION_HANDLE_INVALID;
  pthread_mutex_unlock(&mu);
  return r;
}

static CK_RV open_session(CK_SLOT_ID slot, CK_FLAGS flags, CK_VOID_PTR app, CK_NOTIFY notify,
                          CK_SESSION_HANDLE_PTR out)
{
  if (removed())
    return CKR_TOKEN_NOT_PRESENT;
  CK_RV r = softhsm->C_OpenSession(slot, flags, app, notify, out);
  pthread_mutex_lock(&mu);
  if (r == CKR_OK && nsessions < MAX_SESSIONS) {
    sessions[nsessions].h = *out;
    sessions[nsessions++].dead = 0;
  }
  pthread_mutex_unlock(&mu);
  return r;
}

static CK_RV login(CK_SESSION_HANDLE s, CK_USER_TYPE t, CK_UTF8CHAR_PTR pin, CK_ULONG n)
{
  CK_RV r = check(s);
  if (r != CKR_OK)
    return r;
  const char *f = getenv("TP_P11FAULT_PIN_FILE");
  if (f && access(f, F_OK) == 0) {
    FILE *out = fopen(f, "a");
    if (out) {
      fputs("login\n", out);
      fclose(out);
    }
    return CKR_PIN_INCORRECT;
  }
  return softhsm->C_Login(s, t, pin, n);
}

static void hang(void)
{
  const char *f = getenv("TP_P11FAULT_HANG_FILE");
  for (int i = 0; f && i < 6000 && access(f, F_OK) == 0; i++)
    usleep(10000);
}

static CK_RV encrypt(CK_SESSION_HANDLE s, CK_BYTE_PTR a, CK_ULONG b, CK_BYTE_PTR c, CK_ULONG_PTR d)
{
  hang();
  CK_RV r = check(s);
  return r != CKR_OK ? r : softhsm->C_Encrypt(s, a, b, c, d);
}

static CK_RV decrypt(CK_SESSION_HANDLE s, CK_BYTE_PTR a, CK_ULONG b, CK_BYTE_PTR c, CK_ULONG_PTR d)
{
  hang();
  CK_RV r = check(s);
  return r != CKR_OK ? r : softhsm->C_Decrypt(s, a, b, c, d);
}

#define PASS(name, params, args)                                                                                   \
  static CK_RV w_##name params                                                                                     \
  {                                                                                                                \
    CK_RV r = check(s);                                                                                            \
    return r != CKR_OK ? r : softhsm->C_##name args;                                                              \
  }
PASS(EncryptInit, (CK_SESSION_HANDLE s, CK_MECHANISM_PTR m, CK_OBJECT_HANDLE k), (s, m, k))
PASS(DecryptInit, (CK_SESSION_HANDLE s, CK_MECHANISM_PTR m, CK_OBJECT_HANDLE k), (s, m, k))
PASS(FindObjectsInit, (CK_SESSION_HANDLE s, CK_ATTRIBUTE_PTR t, CK_ULONG n), (s, t, n))
PASS(GetAttributeValue, (CK_SESSION_HANDLE s, CK_OBJECT_HANDLE o, CK_ATTRIBUTE_PTR t, CK_ULONG n), (s, o, t, n))
PASS(SignInit, (CK_SESSION_HANDLE s, CK_MECHANISM_PTR m, CK_OBJECT_HANDLE k), (s, m, k))
PASS(Sign, (CK_SESSION_HANDLE s, CK_BYTE_PTR a, CK_ULONG b, CK_BYTE_PTR c, CK_ULONG_PTR d), (s, a, b, c, d))
PASS(GetSessionInfo, (CK_SESSION_HANDLE s, CK_SESSION_INFO_PTR i), (s, i))

CK_RV C_GetFunctionList(CK_FUNCTION_LIST_PTR_PTR out);
CK_RV C_GetFunctionList(CK_FUNCTION_LIST_PTR_PTR out)
{
  if (!softhsm) {
    const char *path = getenv("TP_P11FAULT_MODULE");
    void *dl = dlopen(path ? path : "/usr/lib/softhsm/libsofthsm2.so", RTLD_NOW | RTLD_LOCAL);
    CK_C_GetFunctionList get = dl ? (CK_C_GetFunctionList)dlsym(dl, "C_GetFunctionList") : NULL;
    if (!get || get(&softhsm) != CKR_OK)
      return CKR_GENERAL_ERROR;
    wrapped = *softhsm;
    wrapped.C_OpenSession = open_session;
    wrapped.C_Login = login;
    wrapped.C_EncryptInit = w_EncryptInit;
    wrapped.C_Encrypt = encrypt;
    wrapped.C_DecryptInit = w_DecryptInit;
    wrapped.C_Decrypt = decrypt;
    wrapped.C_FindObjectsInit = w_FindObjectsInit;
    wrapped.C_GetAttributeValue = w_GetAttributeValue;
    wrapped.C_SignInit = w_SignInit;
    wrapped.C_Sign = w_Sign;
    wrapped.C_GetSessionInfo = w_GetSessionInfo;
  }
  *out = &wrapped;
  return CKR_OK;
}
