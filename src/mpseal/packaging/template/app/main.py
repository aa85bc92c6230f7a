# The app's entry module. The boot guard verifies the signed image, mounts it and
# calls main(). What the app does for updates (docs/app.md, "Connect your app"):
#   1. its own health check, then mpseal_guard.confirm(): a new release runs on
#      trial until then, and is rolled back if it never gets there;
#   2. mpseal_ota.report_boot(): the server learns the update worked (its rollout
#      counts it; auto-halt needs these reports);
#   3. update checks in the background (an asyncio task here; a thread works too);
#   4. never return in the field and sealed profiles: when main() returns, the
#      guard resets the board.
import greet

try:
    import mpseal_guard
except ImportError:  # running without the guard, e.g. straight from the source tree
    mpseal_guard = None

CHECK_EVERY = 3600  # seconds between update checks (the server's rollout decides who gets what)
CONFIG = "/mpseal/config.json"  # written by `mpseal provision`: server, app, board, channel


def version():
    """This release's version as signed in its manifest ("dev" without the guard)."""
    me = mpseal_guard.running() if mpseal_guard else None
    return me["version"] if me else "dev"


def profile():
    return mpseal_guard.config()["profile"] if mpseal_guard else "dev"


def provisioned():
    import os

    try:
        os.stat(CONFIG)
        return True
    except OSError:
        return False


def secrets():
    """The secrets sealed for this device at provisioning (Wi-Fi password, tokens)."""
    try:
        import mpseal_secrets

        return mpseal_secrets.load()
    except Exception:  # why: not provisioned with --secrets, or not on a device
        return {}


def health_check():
    """Replace with the app's own test: sensors answer, the network comes up, ..."""
    return greet.sum_squares(1000) == 332833500


def confirm_and_report():
    if mpseal_guard is None:
        return
    mpseal_guard.confirm()  # commits a trial release; False when there is none
    if provisioned():  # also after a rollback: the server learns that one failed
        import mpseal_ota

        try:
            mpseal_ota.report_boot()
        except Exception as e:  # why: offline now; the report is sent after the next boot
            mpseal_guard.log("boot report not sent: %s" % e)


async def check_for_updates():
    import asyncio

    import mpseal_ota

    while True:
        try:
            if mpseal_ota.check_once() == "staged":
                import mpseal_port

                mpseal_port.reset()  # into the new release's trial boot
        except Exception as e:  # why: refused or offline: try again later
            mpseal_guard.log("update check: %s" % e)
        await asyncio.sleep(CHECK_EVERY)


async def run_forever():
    import asyncio

    wifi = secrets().get("wifi_password")  # e.g. network.WLAN(...).connect(ssid, wifi)
    if provisioned():
        asyncio.create_task(check_for_updates())
    while wifi or True:
        # The product's own work goes here.
        await asyncio.sleep(60)


def main():
    print(greet.message())
    print("sum of squares below 1000:", greet.sum_squares(1000))
    if not health_check():
        raise RuntimeError("health check failed")  # a trial release is rolled back
    confirm_and_report()
    if profile() == "dev":
        return  # dev: back to the REPL
    import asyncio

    asyncio.run(run_forever())
