from django.contrib.auth import views as auth_views
from django.urls import include, path

from backupsite.views import accounts, audit, users
from jobs.views.dashboard import dashboard

user_patterns = (
    [
        path("", users.user_list, name="list"),
        path("new/", users.user_create, name="create"),
        path("<int:pk>/", users.user_edit, name="edit"),
        path("<int:pk>/active/", users.user_set_active, name="set_active"),
        path("<int:pk>/reset/", users.user_send_reset, name="send_reset"),
    ],
    "users",
)

urlpatterns = [
    path("", dashboard, name="dashboard"),
    path("accounts/login/", accounts.LoginView.as_view(), name="login"),
    path("accounts/logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("accounts/password/", accounts.PasswordChangeView.as_view(), name="password_change"),
    path("accounts/password/done/", auth_views.PasswordChangeDoneView.as_view(), name="password_change_done"),
    path("accounts/confirm/", accounts.sudo_confirm, name="sudo"),
    path("accounts/language/", accounts.set_language, name="set_language"),
    path("accounts/reset/", accounts.password_reset, name="password_reset"),
    path("accounts/reset/sent/", auth_views.PasswordResetDoneView.as_view(), name="password_reset_done"),
    path(
        "accounts/reset/<uidb64>/<token>/",
        accounts.PasswordResetConfirmView.as_view(),
        name="password_reset_confirm",
    ),
    path("accounts/reset/done/", auth_views.PasswordResetCompleteView.as_view(), name="password_reset_complete"),
    path("audit/", audit.audit_list, name="audit"),
    path("users/", include(user_patterns)),
    path("destinations/", include("destinations.urls")),
    path("", include("jobs.urls")),
]
