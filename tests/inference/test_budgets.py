"""The memory bounds: body bytes (refuse past the bound) and decoded pixels (wait, first
come first served, nothing leaked by a cancelled waiter)."""

from __future__ import annotations

import asyncio

import pytest

from app.errors import Overloaded
from app.inference.budgets import ByteBudget, Reservation, WeightedSemaphore


def test_byte_budget_refuses_past_its_capacity_and_reservations_release_once():
    budget = ByteBudget(100, "request bodies", "MAX_REQUEST_BYTES_IN_FLIGHT")
    first, second = Reservation(budget), Reservation(budget)
    first.grow(60)
    with pytest.raises(
        Overloaded, match="holding 60 bytes of request bodies.*MAX_REQUEST_BYTES_IN_FLIGHT"
    ) as refusal:
        second.grow(41)
    assert refusal.value.headers == {"Retry-After": "1"} and second.held == 0
    second.grow(40)
    first.shrink(20)
    assert budget.used == 80 and first.held == 40
    first.release()
    first.release()  # a second release gives back nothing more
    second.release()
    assert budget.used == 0


def test_weighted_semaphore_serves_in_order_and_clamps_oversized_weights():
    async def scenario():
        semaphore = WeightedSemaphore(10)
        order = []

        async def worker(name, weight, hold_s):
            taken = await semaphore.acquire(weight)
            try:
                order.append(name)
                await asyncio.sleep(hold_s)
            finally:
                semaphore.release(taken)

        big = asyncio.create_task(worker("big", 8, 0.05))
        await asyncio.sleep(0)
        # "huge" asks for more than the capacity: clamped, it runs alone; "small" arrived
        # after it and waits its turn although it would fit beside "big".
        huge = asyncio.create_task(worker("huge", 50, 0.01))
        await asyncio.sleep(0)
        small = asyncio.create_task(worker("small", 2, 0.01))
        await asyncio.gather(big, huge, small)
        assert order == ["big", "huge", "small"]
        assert semaphore.available == 10 and semaphore.waiting == 0

    asyncio.run(scenario())


def test_a_cancelled_waiter_leaves_nothing_behind():
    async def scenario():
        semaphore = WeightedSemaphore(10)
        await semaphore.acquire(9)
        waiter = asyncio.create_task(semaphore.acquire(5))
        behind = asyncio.create_task(semaphore.acquire(1))
        await asyncio.sleep(0)
        assert semaphore.waiting == 2
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        assert await asyncio.wait_for(behind, 1) == 1  # the head left: the one behind fits
        semaphore.release(9)
        semaphore.release(1)
        assert semaphore.available == 10 and semaphore.waiting == 0

    asyncio.run(scenario())


def test_a_decoding_thread_takes_room_only_when_it_fits_and_nobody_waits_ahead():
    async def scenario():
        semaphore = WeightedSemaphore(10)
        loop = asyncio.get_running_loop()
        # From a thread, as the decoding threads call it.
        assert await loop.run_in_executor(None, semaphore.try_acquire, 6) == 6
        assert await loop.run_in_executor(None, semaphore.try_acquire, 5) is None  # does not fit
        waiter = asyncio.create_task(semaphore.acquire(5))
        await asyncio.sleep(0)
        # 1 would fit, but a waiter is ahead of it: first come, first served holds for threads too.
        assert await loop.run_in_executor(None, semaphore.try_acquire, 1) is None
        loop.call_soon_threadsafe(semaphore.release, 6)  # as a thread gives its pixels back
        assert await asyncio.wait_for(waiter, 1) == 5
        assert semaphore.try_acquire(50) is None  # clamped to 10: waits for all of it
        semaphore.release(5)
        assert semaphore.try_acquire(50) == 10
        semaphore.release(10)
        assert semaphore.available == 10 and semaphore.waiting == 0

    asyncio.run(scenario())


def test_threads_taking_and_giving_back_room_at_once_lose_none_of_it():
    async def scenario():
        semaphore = WeightedSemaphore(1000)
        loop = asyncio.get_running_loop()
        taken = []

        def decode_many():
            for _ in range(2000):
                weight = semaphore.try_acquire(7)
                if weight is not None:
                    taken.append(weight)
                    loop.call_soon_threadsafe(semaphore.release, weight)

        await asyncio.gather(*(loop.run_in_executor(None, decode_many) for _ in range(4)))
        await asyncio.sleep(0.1)  # the last releases run on the loop
        assert taken and semaphore.available == 1000

    asyncio.run(scenario())
